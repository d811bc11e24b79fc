//! Threads and queues around [`Engine`] shards.
//!
//! Each shard owns a disjoint set of instruments (instrument `i` goes to shard
//! `i % shards`) and runs on its own OS thread. Commands reach it through a bounded
//! crossbeam channel (lock-free array queue): a full queue is an immediate
//! [`SubmitError::QueueFull`] to the submitter, never a silent drop and never a block.
//! Each command is stamped with its ingest time (by the journal stage's [`Stamper`], or
//! the shard's when nothing is journaled); the shard processes commands in batches and
//! publishes the events of a batch into its [`EventRing`] with one head store. Readers of
//! the ring never block it.
//!
//! Accounts: each shard keeps its own ledger, so with several shards an account's funds
//! are partitioned per shard (an isolated risk domain per shard, funded by transfers sent
//! to that shard). With one shard (the default) there is one ledger for everything.

mod handle;
mod shard;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use crossbeam_utils::{Backoff, CachePadded};

use crate::accounts::Balance;
use crate::board::{BalanceBoard, PublishedAccount};
use crate::book::{BookSnapshot, RestingOrder};
use crate::clock::{SharedClock, Stamper, WallClock};
use crate::command::{Command, CommandKind, Transfer};
use crate::durable::{
    journal_loop, recover, snapshot_loop, DurabilityConfig, Failure, JournalItem, JournalStage,
    JournalStats, Recovery, SnapshotJob,
};
use crate::engine::{Engine, EngineCounters, EngineSpec};
use crate::event::Event;
use crate::idempotency::{IdempotencyKey, KeyRecord};
use crate::instrument::{Asset, Instrument, InstrumentError};
use crate::journal::{JournalError, JournalWriter};
use crate::retention::Retention;
use crate::ring::{EventRing, RingReader, RingWriter};
use crate::snapshot::RestoredSnapshot;
use crate::types::{AccountId, AssetId, InstrumentId, OrderId, Seq, UnixNanos};
use shard::{DurableState, Query, Request, ShardWorker};

/// Called by a shard thread after it publishes a batch of events (e.g. to wake async
/// readers). Must be cheap and must not block.
pub type PublishHook = Arc<dyn Fn() + Send + Sync>;

/// Called by a shard thread after each batch with the commands it applied in it, in
/// order: `(shard, sequence of the first, commands)`, stamped. Sequences are the
/// journal's with durability on (so journaled before the call), and count from the
/// shard's start without it. A primary hands them to its replicas (see
/// [`EngineRuntime::start_replica`]). Must not block.
pub type CommandTap = Arc<dyn Fn(usize, u64, &[Command]) + Send + Sync>;

/// Called with `(shard, event)` for every event recovery replays from the journal (before
/// any thread starts), so state kept outside the engine can be rebuilt.
pub type ReplayHook = Arc<dyn Fn(usize, &Event) + Send + Sync>;

/// How the engine runs.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Instruments, assets, accounts, book capacity.
    pub spec: EngineSpec,
    /// Shard threads (at least 1).
    pub shards: usize,
    /// Commands each shard's queue holds before submitters get `QueueFull`.
    pub queue_capacity: usize,
    /// Events each shard's ring keeps for readers (rounded up to a power of two).
    pub ring_capacity: usize,
    /// Commands processed between two publications of the ring head.
    pub batch_max: usize,
    /// Called after every publication.
    pub on_publish: Option<PublishHook>,
    /// How long an idle shard thread spins before it parks: lower latency for the first
    /// command after a pause, at the cost of a busy core while idle.
    pub idle_spin: Duration,
    /// Journal, snapshots and recovery; `None`: state lives in memory only.
    pub durability: Option<DurabilityConfig>,
    /// Sees every event recovery replays.
    pub on_replay: Option<ReplayHook>,
    /// Sees every command applied, once per batch.
    pub on_commands: Option<CommandTap>,
    /// How far consumers that keep durable state of their own have stored what they
    /// derive from events: pruning keeps, and recovery replays, what they still need
    /// (see [`crate::Retention`]).
    pub retention: Option<Arc<Retention>>,
    /// Where command timestamps come from (see [`crate::clock`]).
    pub clock: SharedClock,
    /// How long a question to a shard waits for its answer ([`ASK_TIMEOUT`]).
    pub ask_timeout: Duration,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("shards", &self.shards)
            .field("queue_capacity", &self.queue_capacity)
            .field("ring_capacity", &self.ring_capacity)
            .field("batch_max", &self.batch_max)
            .field("idle_spin", &self.idle_spin)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            spec: EngineSpec::default(),
            shards: 1,
            queue_capacity: 65_536,
            ring_capacity: 1 << 20,
            batch_max: 1024,
            on_publish: None,
            idle_spin: Duration::from_micros(50),
            durability: None,
            on_replay: None,
            on_commands: None,
            retention: None,
            clock: WallClock::shared(),
            ask_timeout: ASK_TIMEOUT,
        }
    }
}

/// Why a command was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The shard's queue is full: back off and retry.
    #[error("engine queue is full")]
    QueueFull,
    /// The engine has stopped.
    #[error("engine has stopped")]
    Stopped,
    /// No shard owns the instrument.
    #[error("unknown instrument")]
    UnknownInstrument,
    /// No such shard.
    #[error("unknown shard")]
    UnknownShard,
    /// The journal could not be written: the engine takes no more commands.
    #[error("journal failed; the engine takes no more commands")]
    JournalFailed,
    /// The engine is a replica: it applies its primary's commands and takes none of its
    /// own (send them to the primary).
    #[error("this engine is a replica; commands go to the primary")]
    Replica,
    /// Only a replica applies another engine's commands.
    #[error("this engine is not a replica")]
    NotReplica,
    /// A question was queued but not answered in time ([`ASK_TIMEOUT`]: the shard is stuck
    /// or far behind): the caller gives up rather than wait forever.
    #[error("the engine did not answer in time")]
    Timeout,
}

/// How long a question to a shard ([`EngineHandle`]'s snapshots, balances, digests) waits
/// for its answer. Answers come between two commands, normally within microseconds; a
/// shard that cannot answer in this long is stuck, not slow.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The instrument table is invalid.
    #[error(transparent)]
    Instrument(#[from] InstrumentError),
    /// Recovery found damage, or the data directory is unusable.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process (lock held on its LOCK file)")]
    Locked(std::path::PathBuf),
}

/// Takes the data directory's exclusive lock, held as long as the file stays open: two
/// processes appending to one journal would corrupt it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    std::fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(JournalError::io(&path, e).into()),
    }
}

/// A shard's state digest, taken between two commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardDigest {
    /// [`Engine::state_digest`].
    pub state: u64,
    /// Running totals.
    pub counters: EngineCounters,
    /// Journal sequence of the last applied command (0 without a journal).
    pub journal_seq: u64,
}

/// Per-shard counters, updated once per batch.
#[derive(Debug, Default)]
pub struct ShardStats {
    commands: CachePadded<AtomicU64>,
    events: AtomicU64,
    trades: AtomicU64,
    rejects: AtomicU64,
    batches: AtomicU64,
}

impl ShardStats {
    fn store(&self, c: &EngineCounters, batches: u64) {
        self.commands.store(c.commands, Ordering::Relaxed);
        self.events.store(c.events, Ordering::Relaxed);
        self.trades.store(c.trades, Ordering::Relaxed);
        self.rejects.store(c.rejects, Ordering::Relaxed);
        self.batches.store(batches, Ordering::Relaxed);
    }

    fn load(&self) -> EngineCounters {
        EngineCounters {
            commands: self.commands.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            trades: self.trades.load(Ordering::Relaxed),
            rejects: self.rejects.load(Ordering::Relaxed),
        }
    }
}

struct ShardLink {
    tx: Sender<Request>,
    board: Arc<BalanceBoard>,
    ring: Arc<EventRing>,
    stats: Arc<ShardStats>,
    journal: Option<Arc<JournalStats>>,
    failure: Arc<Failure>,
    snapshot_warning: Arc<Failure>,
}

struct Shared {
    shards: Vec<ShardLink>,
    instruments: Vec<Instrument>,
    assets: Vec<Asset>,
    next_order_id: AtomicU64,
    stopped: AtomicBool,
    clock: SharedClock,
    ask_timeout: Duration,
    /// Applies a primary's commands only ([`EngineRuntime::start_replica`]).
    replica: bool,
}

/// A cheap, cloneable handle to submit commands, ask questions and read events.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("shards", &self.shared.shards.len()).finish()
    }
}

/// The running engine: its threads and a handle.
pub struct EngineRuntime {
    handle: EngineHandle,
    threads: Vec<JoinHandle<Engine>>,
    helpers: Vec<JoinHandle<()>>,
    recoveries: Vec<Recovery>,
    /// The data directory's lock, released when the runtime is dropped.
    _lock: Option<std::fs::File>,
}

impl EngineRuntime {
    /// Builds every shard (recovering it from its data directory when durability is on)
    /// and starts its threads.
    pub fn start(config: RuntimeConfig) -> Result<EngineRuntime, StartError> {
        Self::start_from(config, None)
    }

    /// Starts a replica: every shard from a snapshot its primary took (one per shard, in
    /// shard order), without durability of its own. It takes no commands but the
    /// primary's, applied in the primary's order with the primary's stamps through
    /// [`EngineHandle::replicate`]; being deterministic, it then publishes the same
    /// events with the same sequences, and answers the same questions the same way.
    pub fn start_replica(
        mut config: RuntimeConfig,
        snapshots: Vec<RestoredSnapshot>,
    ) -> Result<EngineRuntime, StartError> {
        config.shards = snapshots.len().max(1);
        config.durability = None;
        config.retention = None;
        Self::start_from(config, Some(snapshots))
    }

    fn start_from(
        config: RuntimeConfig,
        snapshots: Option<Vec<RestoredSnapshot>>,
    ) -> Result<EngineRuntime, StartError> {
        let shard_count = config.shards.max(1);
        let replica = snapshots.is_some();
        let mut snapshots = snapshots.map(|s| s.into_iter().map(Some).collect::<Vec<_>>());
        let lock = config.durability.as_ref().map(|d| lock_data_dir(&d.dir)).transpose()?;
        if let Some(d) = &config.durability {
            // Under the lock: the directory's shard count, recorded or checked.
            crate::durable::check_shards(&d.dir, shard_count)?;
        }
        let mut links = Vec::with_capacity(shard_count);
        let mut threads = Vec::with_capacity(shard_count);
        let mut helpers = Vec::new();
        let mut recoveries = Vec::new();
        let mut instruments = Vec::new();
        let mut max_order_id = 0;
        for shard in 0..shard_count {
            let initial = snapshots.as_mut().and_then(|s| s.get_mut(shard)?.take());
            let started = start_shard(&config, shard, shard_count, initial)?;
            instruments = started.instruments;
            max_order_id = max_order_id.max(started.max_order_id);
            links.push(started.link);
            threads.push(started.thread);
            helpers.extend(started.helpers);
            recoveries.extend(started.recovery);
        }
        let shared = Arc::new(Shared {
            shards: links,
            instruments,
            assets: config.spec.assets.clone(),
            next_order_id: AtomicU64::new(max_order_id + 1),
            stopped: AtomicBool::new(false),
            clock: Arc::clone(&config.clock),
            ask_timeout: config.ask_timeout,
            replica,
        });
        Ok(EngineRuntime {
            handle: EngineHandle { shared },
            threads,
            helpers,
            recoveries,
            _lock: lock,
        })
    }

    /// What recovery did, per shard (empty without durability).
    pub fn recoveries(&self) -> &[Recovery] {
        &self.recoveries
    }

    /// A handle to this engine.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Stops every shard after the commands already queued and returns their final state.
    pub fn shutdown(self) -> Vec<Engine> {
        self.handle.shared.stopped.store(true, Ordering::Release);
        for link in &self.handle.shared.shards {
            // A full queue still takes the stop eventually: this blocks until there is room.
            let _ = link.tx.send(Request::Stop);
        }
        let engines = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("engine thread does not panic"))
            .collect();
        for helper in self.helpers {
            let _ = helper.join();
        }
        engines
    }
}

/// One shard, running.
struct StartedShard {
    link: ShardLink,
    thread: JoinHandle<Engine>,
    /// The journal and snapshot threads (durable shards).
    helpers: Vec<JoinHandle<()>>,
    recovery: Option<Recovery>,
    instruments: Vec<Instrument>,
    max_order_id: u64,
}

/// Builds shard `shard` (from `initial`, a primary's snapshot, for a replica; recovering
/// it when durable) and starts its threads.
fn start_shard(
    config: &RuntimeConfig,
    shard: usize,
    shard_count: usize,
    initial: Option<RestoredSnapshot>,
) -> Result<StartedShard, StartError> {
    let owns = move |i: InstrumentId| i.shard(shard_count) == shard;
    let mut applied = 0;
    let mut last_ts = UnixNanos(0);
    let (mut engine, recovery) = match (initial, &config.durability) {
        (Some(s), _) => {
            (applied, last_ts) = (s.seq, UnixNanos(s.last_ts));
            (s.engine, None)
        }
        (None, Some(d)) => {
            let hook = config.on_replay.clone();
            let mut on_event = |e: &Event| {
                if let Some(h) = &hook {
                    h(shard, e);
                }
            };
            let floor = config.retention.as_ref().and_then(|r| r.floor(shard));
            let dir = d.shard_dir(shard);
            let (engine, r) = recover(&dir, shard, &config.spec, owns, floor, &mut on_event)?;
            (engine, Some(r))
        }
        (None, None) => (Engine::new(&config.spec, owns)?, None),
    };
    let instruments = engine.instruments().to_vec();
    let max_order_id = engine.max_order_id();
    let (tx, rx) = bounded(config.queue_capacity.max(1));
    let (ring, writer) = EventRing::with_capacity(config.ring_capacity);
    let stats = Arc::new(ShardStats::default());
    let failure = Arc::new(Failure::default());
    let snapshot_warning = Arc::new(Failure::default());
    let ledger = engine.ledger();
    let board = Arc::new(BalanceBoard::new(
        ledger.accounts(),
        config.spec.assets.len(),
        ledger.instruments(),
    ));
    ledger.for_each(|a, row, positions| board.write(a, row, positions));
    engine.take_changed_balances(|_, _, _| {});
    let mut worker = ShardWorker {
        board: Arc::clone(&board),
        engine,
        rx,
        writer,
        stats: Arc::clone(&stats),
        batch_max: config.batch_max.max(1),
        on_publish: config.on_publish.clone(),
        idle_spin: config.idle_spin,
        stamper: Stamper::new(Arc::clone(&config.clock), last_ts),
        durable: None,
        applied,
        on_commands: config.on_commands.clone().map(|tap| (tap, Vec::new())),
        shard,
    };
    let mut helpers = Vec::new();
    let mut journal = None;
    if let (Some(d), Some(r)) = (&config.durability, &recovery) {
        let failures = (Arc::clone(&failure), Arc::clone(&snapshot_warning));
        let (jstats, threads) = start_durable(config, d, r, shard, &mut worker, failures)?;
        helpers = threads;
        journal = Some(jstats);
    }
    let thread = std::thread::Builder::new()
        .name(format!("engine-{shard}"))
        .spawn(move || worker.run())
        .expect("spawning an engine thread at start-up");
    let link = ShardLink { tx, board, ring, stats, journal, failure, snapshot_warning };
    Ok(StartedShard { link, thread, helpers, recovery, instruments, max_order_id })
}

/// Puts the journal stage in front of a durable shard's worker and the snapshot writer
/// behind it; their statistics and threads.
fn start_durable(
    config: &RuntimeConfig,
    d: &DurabilityConfig,
    r: &Recovery,
    shard: usize,
    worker: &mut ShardWorker,
    (failure, snapshot_warning): (Arc<Failure>, Arc<Failure>),
) -> Result<(Arc<JournalStats>, Vec<JoinHandle<()>>), StartError> {
    let dir = d.shard_dir(shard);
    let writer = JournalWriter::open(&dir, shard as u32, r.next_seq, d.segment_bytes)?;
    let jstats = Arc::new(JournalStats::default());
    jstats.applied_seq.store(r.next_seq - 1, Ordering::Relaxed);
    jstats.durable_seq.store(r.next_seq - 1, Ordering::Relaxed);
    let (batch_tx, batch_rx) = bounded::<Request>(4);
    let (snap_tx, snap_rx) = bounded::<SnapshotJob>(1);
    let queue = std::mem::replace(&mut worker.rx, batch_rx);
    let stage = JournalStage {
        writer,
        mode: d.mode,
        batch_max: d.batch_max.max(1),
        stamper: Stamper::new(Arc::clone(&config.clock), UnixNanos(r.last_ts)),
        stats: Arc::clone(&jstats),
        failure: Arc::clone(&failure),
    };
    let journal = std::thread::Builder::new()
        .name(format!("journal-{shard}"))
        .spawn(move || {
            let forward = |batch| batch_tx.send(Request::Batch(batch)).is_ok();
            journal_loop(stage, queue, forward)
        })
        .expect("spawning a journal thread at start-up");
    let (ss, sf) = (Arc::clone(&jstats), failure);
    let retention = config.retention.clone().map(|r| (r, shard));
    let snapshots = std::thread::Builder::new()
        .name(format!("snapshot-{shard}"))
        .spawn(move || snapshot_loop(dir, snap_rx, ss, sf, snapshot_warning, retention))
        .expect("spawning a snapshot thread at start-up");
    worker.durable = Some(DurableState {
        shard: shard as u32,
        applied_seq: r.next_seq - 1,
        last_snapshot_seq: r.snapshot.as_ref().map_or(0, |(_, seq)| *seq),
        snapshot_every: d.snapshot_every,
        snapshots: snap_tx,
        stats: Arc::clone(&jstats),
    });
    worker.stamper.observe(UnixNanos(r.last_ts));
    worker.applied = r.next_seq - 1;
    Ok((jstats, vec![journal, snapshots]))
}
