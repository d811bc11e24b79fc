//! Threads and queues around [`Engine`] shards.
//!
//! Each shard owns a disjoint set of instruments (instrument `i` goes to shard
//! `i % shards`) and runs on its own OS thread. Commands reach it through a bounded
//! crossbeam channel (lock-free array queue): a full queue is an immediate
//! [`SubmitError::QueueFull`] to the submitter, never a silent drop and never a block.
//! The shard stamps each command with its ingest time, processes commands in batches and
//! publishes the events of a batch into its [`EventRing`] with one head store. Readers of
//! the ring never block it.
//!
//! Accounts: each shard keeps its own ledger, so with several shards an account's funds
//! are partitioned per shard (an isolated risk domain per shard, funded by transfers sent
//! to that shard). With one shard (the default) there is one ledger for everything.

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
use crate::types::{AccountId, AssetId, InstrumentId, OrderId, Seq, UnixNanos};

/// Called by a shard thread after it publishes a batch of events (e.g. to wake async
/// readers). Must be cheap and must not block.
pub type PublishHook = Arc<dyn Fn() + Send + Sync>;

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
    /// How far consumers that keep durable state of their own have stored what they
    /// derive from events: pruning keeps, and recovery replays, what they still need
    /// (see [`crate::retention`]).
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

/// A read-only question answered by a shard between two commands.
enum Query {
    Book { instrument: InstrumentId, depth: usize, reply: Sender<Option<BookSnapshot>> },
    Balances { account: AccountId, reply: Sender<Option<Vec<Balance>>> },
    Digest { reply: Sender<ShardDigest> },
    OpenOrders { accounts: Vec<AccountId>, reply: Sender<Vec<(InstrumentId, RestingOrder)>> },
    Halted { instrument: InstrumentId, reply: Sender<Option<bool>> },
    ExecSeqs { accounts: Vec<AccountId>, reply: Sender<Vec<Option<Seq>>> },
    Keys { accounts: Vec<AccountId>, reply: Sender<Vec<(AccountId, KeyRecord)>> },
    Key { account: AccountId, key: IdempotencyKey, reply: Sender<Option<KeyRecord>> },
}

enum Request {
    Command(Command),
    Query(Query),
    /// A journaled batch, in journal order (durable shards only).
    Batch(Vec<Request>),
    Stop,
}

impl JournalItem for Request {
    fn command_mut(&mut self) -> Option<&mut Command> {
        match self {
            Request::Command(c) => Some(c),
            _ => None,
        }
    }

    fn is_stop(&self) -> bool {
        matches!(self, Request::Stop)
    }
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

/// Wall-clock nanoseconds since the epoch (see [`crate::clock::WallClock`]).
pub fn now_nanos() -> UnixNanos {
    crate::clock::Clock::now(&crate::clock::WallClock)
}

impl EngineRuntime {
    /// Builds every shard (recovering it from its data directory when durability is on)
    /// and starts its threads.
    pub fn start(config: RuntimeConfig) -> Result<EngineRuntime, StartError> {
        let shard_count = config.shards.max(1);
        let lock = config.durability.as_ref().map(|d| lock_data_dir(&d.dir)).transpose()?;
        let mut links = Vec::with_capacity(shard_count);
        let mut threads = Vec::with_capacity(shard_count);
        let mut helpers = Vec::new();
        let mut recoveries = Vec::new();
        let mut instruments = Vec::new();
        let mut max_order_id = 0;
        for shard in 0..shard_count {
            let owns = move |i: InstrumentId| i.0 as usize % shard_count == shard;
            let (engine, recovery) = match &config.durability {
                Some(d) => {
                    let hook = config.on_replay.clone();
                    let mut on_event = |e: &Event| {
                        if let Some(h) = &hook {
                            h(shard, e);
                        }
                    };
                    let floor = config.retention.as_ref().and_then(|r| r.floor(shard));
                    let dir = d.shard_dir(shard);
                    let (engine, r) =
                        recover(&dir, shard, &config.spec, owns, floor, &mut on_event)?;
                    (engine, Some(r))
                }
                None => (Engine::new(&config.spec, owns)?, None),
            };
            instruments = engine.instruments().to_vec();
            max_order_id = max_order_id.max(engine.max_order_id());
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
            let mut engine = engine;
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
                stamper: Stamper::new(Arc::clone(&config.clock), UnixNanos(0)),
                durable: None,
            };
            let mut journal = None;
            if let (Some(d), Some(r)) = (&config.durability, &recovery) {
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
                helpers.push(
                    std::thread::Builder::new()
                        .name(format!("journal-{shard}"))
                        .spawn(move || {
                            let forward = |batch| batch_tx.send(Request::Batch(batch)).is_ok();
                            journal_loop(stage, queue, forward)
                        })
                        .expect("spawning a journal thread at start-up"),
                );
                let (ss, sf, sw) =
                    (Arc::clone(&jstats), Arc::clone(&failure), Arc::clone(&snapshot_warning));
                let retention = config.retention.clone().map(|r| (r, shard));
                helpers.push(
                    std::thread::Builder::new()
                        .name(format!("snapshot-{shard}"))
                        .spawn(move || snapshot_loop(dir, snap_rx, ss, sf, sw, retention))
                        .expect("spawning a snapshot thread at start-up"),
                );
                worker.durable = Some(DurableState {
                    shard: shard as u32,
                    applied_seq: r.next_seq - 1,
                    last_snapshot_seq: r.snapshot.as_ref().map_or(0, |(_, seq)| *seq),
                    snapshot_every: d.snapshot_every,
                    snapshots: snap_tx,
                    stats: Arc::clone(&jstats),
                });
                worker.stamper.observe(UnixNanos(r.last_ts));
                journal = Some(jstats);
            }
            let thread = std::thread::Builder::new()
                .name(format!("engine-{shard}"))
                .spawn(move || worker.run())
                .expect("spawning an engine thread at start-up");
            links.push(ShardLink { tx, board, ring, stats, journal, failure, snapshot_warning });
            threads.push(thread);
            recoveries.extend(recovery);
        }
        let shared = Arc::new(Shared {
            shards: links,
            instruments,
            assets: config.spec.assets.clone(),
            next_order_id: AtomicU64::new(max_order_id + 1),
            stopped: AtomicBool::new(false),
            clock: Arc::clone(&config.clock),
            ask_timeout: config.ask_timeout,
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

impl EngineHandle {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.shards.len()
    }

    /// The shard that owns `instrument`.
    pub fn shard_of(&self, instrument: InstrumentId) -> Option<usize> {
        ((instrument.0 as usize) < self.shared.instruments.len())
            .then(|| instrument.0 as usize % self.shared.shards.len())
    }

    /// The instrument table.
    pub fn instruments(&self) -> &[Instrument] {
        &self.shared.instruments
    }

    /// The asset table.
    pub fn assets(&self) -> &[Asset] {
        &self.shared.assets
    }

    /// Looks an instrument up by symbol.
    pub fn instrument_by_symbol(&self, symbol: &str) -> Option<&Instrument> {
        self.shared.instruments.iter().find(|i| i.spec.symbol == symbol)
    }

    /// The clock commands are stamped with; everything around the engine that stamps
    /// or times out takes it too.
    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// A fresh, engine-wide unique order id.
    pub fn allocate_order_id(&self) -> OrderId {
        OrderId(self.shared.next_order_id.fetch_add(1, Ordering::Relaxed))
    }

    /// `n` fresh order ids at once (for high-rate submitters such as the synthetic feed).
    pub fn reserve_order_ids(&self, n: u64) -> Range<u64> {
        let start = self.shared.next_order_id.fetch_add(n, Ordering::Relaxed);
        start..start + n
    }

    fn send(&self, shard: usize, request: Request) -> Result<(), SubmitError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(SubmitError::Stopped);
        }
        let link = self.shared.shards.get(shard).ok_or(SubmitError::UnknownShard)?;
        if link.failure.is_failed() {
            return Err(SubmitError::JournalFailed);
        }
        link.tx.try_send(request).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::QueueFull,
            TrySendError::Disconnected(_) if link.failure.is_failed() => SubmitError::JournalFailed,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }

    /// Queues a command on the shard that owns its instrument. Transfers go to shard 0;
    /// use [`EngineHandle::submit_transfer`] to fund another shard's ledger.
    pub fn submit(&self, kind: CommandKind) -> Result<(), SubmitError> {
        let command = Command { ts: UnixNanos(0), kind };
        let shard = match command.instrument() {
            Some(i) => self.shard_of(i).ok_or(SubmitError::UnknownInstrument)?,
            None => 0,
        };
        self.send(shard, Request::Command(command))
    }

    /// Queues a transfer on a given shard's ledger.
    pub fn submit_transfer(&self, shard: usize, transfer: Transfer) -> Result<(), SubmitError> {
        let command = Command { ts: UnixNanos(0), kind: CommandKind::Transfer(transfer) };
        self.send(shard, Request::Command(command))
    }

    fn ask<T>(
        &self,
        shard: usize,
        query: impl FnOnce(Sender<T>) -> Query,
    ) -> Result<T, SubmitError> {
        let (tx, rx) = bounded(1);
        self.send(shard, Request::Query(query(tx)))?;
        rx.recv_timeout(self.shared.ask_timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => SubmitError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => SubmitError::Stopped,
        })
    }

    /// Snapshot of the top `depth` levels, valid at the sequence it carries. Blocks until
    /// the shard answers (between two commands).
    pub fn book_snapshot(
        &self,
        instrument: InstrumentId,
        depth: usize,
    ) -> Result<BookSnapshot, SubmitError> {
        let shard = self.shard_of(instrument).ok_or(SubmitError::UnknownInstrument)?;
        self.ask(shard, |reply| Query::Book { instrument, depth, reply })?
            .ok_or(SubmitError::UnknownInstrument)
    }

    /// Balances of `account` per asset on `shard`'s ledger; `None` for an unknown account.
    /// Answered in order with the commands queued before it (for lock-free reads of
    /// acknowledged balances, see [`EngineHandle::published_account`]).
    pub fn balances(
        &self,
        shard: usize,
        account: AccountId,
    ) -> Result<Option<Vec<Balance>>, SubmitError> {
        self.ask(shard, |reply| Query::Balances { account, reply })
    }

    /// The last sequence of each account's execution reports on `shard` (`None` for an
    /// unknown account), answered after every command queued before the call.
    pub fn exec_seqs(
        &self,
        shard: usize,
        accounts: Vec<AccountId>,
    ) -> Result<Vec<Option<Seq>>, SubmitError> {
        self.ask(shard, |reply| Query::ExecSeqs { accounts, reply })
    }

    /// State digest, counters and journal position of `shard`, taken between two commands.
    pub fn digest(&self, shard: usize) -> Result<ShardDigest, SubmitError> {
        self.ask(shard, |reply| Query::Digest { reply })
    }

    /// Whether trading in `instrument` is halted, answered after every command queued
    /// before the call.
    pub fn is_halted(&self, instrument: InstrumentId) -> Result<bool, SubmitError> {
        let shard = self.shard_of(instrument).ok_or(SubmitError::UnknownInstrument)?;
        self.ask(shard, |reply| Query::Halted { instrument, reply })?
            .ok_or(SubmitError::UnknownInstrument)
    }

    /// Every resting order of `accounts` on `shard`, per instrument in priority order.
    pub fn open_orders(
        &self,
        shard: usize,
        accounts: Vec<AccountId>,
    ) -> Result<Vec<(InstrumentId, RestingOrder)>, SubmitError> {
        self.ask(shard, |reply| Query::OpenOrders { accounts, reply })
    }

    /// The idempotency keys `shard` remembers for `accounts` (accounts in id order, each
    /// oldest first), answered after every command queued before the call.
    pub fn key_records(
        &self,
        shard: usize,
        accounts: Vec<AccountId>,
    ) -> Result<Vec<(AccountId, KeyRecord)>, SubmitError> {
        self.ask(shard, |reply| Query::Keys { accounts, reply })
    }

    /// The record of one idempotency key of `account` on `shard`, if remembered, answered
    /// after every command queued before the call (one map lookup on the engine thread).
    pub fn key_record(
        &self,
        shard: usize,
        account: AccountId,
        key: IdempotencyKey,
    ) -> Result<Option<KeyRecord>, SubmitError> {
        self.ask(shard, |reply| Query::Key { account, key, reply })
    }

    /// Balances and positions of `account` on `shard` as of the last published batch,
    /// read lock-free (the engine thread is not involved); `None` for an unknown account
    /// or shard.
    pub fn published_account(&self, shard: usize, account: AccountId) -> Option<PublishedAccount> {
        self.shared.shards.get(shard)?.board.read(account)
    }

    /// Journal counters of `shard` (`None` without durability).
    pub fn journal_stats(&self, shard: usize) -> Option<&Arc<JournalStats>> {
        self.shared.shards.get(shard)?.journal.as_ref()
    }

    /// The first journal failure of any shard (the shard then takes no more commands).
    pub fn durability_failure(&self) -> Option<String> {
        self.shared.shards.iter().find_map(|l| l.failure.message())
    }

    /// The first snapshot or pruning failure of any shard: nothing is lost (the journal
    /// keeps everything) and the shard keeps running, but an operator should look.
    pub fn snapshot_warning(&self) -> Option<String> {
        self.shared.shards.iter().find_map(|l| l.snapshot_warning.message())
    }

    /// A reader of `shard`'s events, starting at the next event.
    pub fn reader(&self, shard: usize) -> Option<RingReader> {
        self.shared.shards.get(shard).map(|l| l.ring.reader())
    }

    /// `shard`'s event ring.
    pub fn ring(&self, shard: usize) -> Option<&Arc<EventRing>> {
        self.shared.shards.get(shard).map(|l| &l.ring)
    }

    /// Counters summed over every shard (updated once per batch).
    pub fn counters(&self) -> EngineCounters {
        self.shared.shards.iter().map(|l| l.stats.load()).fold(EngineCounters::default(), |a, b| {
            EngineCounters {
                commands: a.commands + b.commands,
                events: a.events + b.events,
                trades: a.trades + b.trades,
                rejects: a.rejects + b.rejects,
            }
        })
    }

    /// Commands waiting in `shard`'s queue.
    pub fn queue_len(&self, shard: usize) -> usize {
        self.shared.shards.get(shard).map_or(0, |l| l.tx.len())
    }
}

struct ShardWorker {
    board: Arc<BalanceBoard>,
    engine: Engine,
    rx: Receiver<Request>,
    writer: RingWriter,
    stats: Arc<ShardStats>,
    batch_max: usize,
    on_publish: Option<PublishHook>,
    idle_spin: Duration,
    /// Stamps commands when nothing is journaled (the journal stage does otherwise);
    /// tracks the last stamp either way.
    stamper: Stamper,
    durable: Option<DurableState>,
}

/// What a durable shard's engine thread tracks: its journal position and when to
/// snapshot.
struct DurableState {
    shard: u32,
    applied_seq: u64,
    last_snapshot_seq: u64,
    snapshot_every: u64,
    snapshots: Sender<SnapshotJob>,
    stats: Arc<JournalStats>,
}

impl ShardWorker {
    /// Spins for up to `idle_spin` (commands usually arrive back to back under load, and
    /// waking a parked thread costs tens of microseconds), then parks until a command comes.
    fn wait(&self) -> Option<Request> {
        let backoff = Backoff::new();
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            match self.rx.try_recv() {
                Ok(request) => return Some(request),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {
                    polls = polls.wrapping_add(1);
                    // Reading the clock costs more than a poll: look at it every 64 polls.
                    if polls.is_multiple_of(64) && start.elapsed() >= self.idle_spin {
                        return self.rx.recv().ok();
                    }
                    if backoff.is_completed() {
                        std::hint::spin_loop();
                    } else {
                        backoff.spin();
                    }
                }
            }
        }
    }

    /// Handles one request; `false` means stop.
    fn handle(&mut self, request: Request) -> bool {
        match request {
            Request::Command(mut command) => {
                match &mut self.durable {
                    // Stamped by the journal stage, which wrote it down with that stamp.
                    Some(d) => {
                        d.applied_seq += 1;
                        self.stamper.observe(command.ts);
                    }
                    // Ingest time, made strictly increasing per shard so replays and clients
                    // can rely on timestamps never going backwards, and readers can tell
                    // commands apart by their timestamp.
                    None => command.ts = self.stamper.stamp(),
                }
                self.engine.process(&command, &mut self.writer);
            }
            Request::Query(query) => self.answer(query),
            Request::Batch(requests) => {
                for request in requests {
                    if !self.handle(request) {
                        return false;
                    }
                }
            }
            Request::Stop => return false,
        }
        true
    }

    fn answer(&mut self, query: Query) {
        // Publish first (balances, then events): whoever gets the answer can then read
        // every event it reflects.
        let board = &self.board;
        self.engine.take_changed_balances(|a, row, p| board.write(a, row, p));
        self.writer.publish();
        // A requester that went away is not the engine's problem: ignore send errors.
        match query {
            Query::Book { instrument, depth, reply } => {
                let _ = reply.send(self.engine.book_snapshot(instrument, depth));
            }
            Query::ExecSeqs { accounts, reply } => {
                let ledger = self.engine.ledger();
                let _ = reply.send(accounts.iter().map(|a| ledger.exec_seq(*a)).collect());
            }
            Query::Balances { account, reply } => {
                let ledger = self.engine.ledger();
                let balances = ledger.contains(account).then(|| {
                    (0..self.engine.assets().len())
                        .map(|a| ledger.balance(account, AssetId(a as u16)))
                        .collect()
                });
                let _ = reply.send(balances);
            }
            Query::Digest { reply } => {
                let _ = reply.send(ShardDigest {
                    state: self.engine.state_digest(),
                    counters: self.engine.counters(),
                    journal_seq: self.durable.as_ref().map_or(0, |d| d.applied_seq),
                });
            }
            Query::Halted { instrument, reply } => {
                let _ = reply.send(self.engine.is_halted(instrument));
            }
            Query::Key { account, key, reply } => {
                let _ = reply.send(self.engine.key_record(account, key, self.stamper.last()));
            }
            Query::Keys { accounts, reply } => {
                let records = self.engine.key_records().filter(|(a, _)| accounts.contains(a));
                let _ = reply.send(records.collect());
            }
            Query::OpenOrders { accounts, reply } => {
                let mut out = Vec::new();
                for instrument in self.engine.instruments() {
                    let Some(book) = self.engine.book(instrument.id) else { continue };
                    for side in [crate::types::Side::Buy, crate::types::Side::Sell] {
                        out.extend(
                            book.orders(side)
                                .filter(|o| accounts.contains(&o.account))
                                .map(|o| (instrument.id, *o)),
                        );
                    }
                }
                let _ = reply.send(out);
            }
        }
    }

    /// Durable shards: publish the journal position and hand a snapshot over when due
    /// (skipped, and retried after the next batch, while the previous one is being written).
    fn after_batch(&mut self) {
        let Some(d) = &mut self.durable else { return };
        d.stats.applied_seq.store(d.applied_seq, Ordering::Relaxed);
        if d.snapshot_every == 0
            || d.applied_seq < d.last_snapshot_seq + d.snapshot_every
            || d.snapshots.is_full()
        {
            return;
        }
        let bytes = crate::snapshot::encode_snapshot(
            &self.engine,
            d.shard,
            d.applied_seq,
            self.stamper.last().0,
        );
        let job = SnapshotJob { seq: d.applied_seq, bytes };
        if d.snapshots.try_send(job).is_ok() {
            d.last_snapshot_seq = d.applied_seq;
        }
    }

    fn run(mut self) -> Engine {
        let mut batches = 0u64;
        'outer: while let Some(first) = self.wait() {
            let mut running = self.handle(first);
            let mut handled = 1;
            while running && handled < self.batch_max {
                match self.rx.try_recv() {
                    Ok(request) => {
                        running = self.handle(request);
                        handled += 1;
                    }
                    Err(_) => break,
                }
            }
            // Balances first: whoever sees this batch's reports reads balances including them.
            let board = &self.board;
            self.engine.take_changed_balances(|a, row, p| board.write(a, row, p));
            self.writer.publish();
            batches += 1;
            self.stats.store(&self.engine.counters(), batches);
            self.after_batch();
            if let Some(hook) = &self.on_publish {
                hook();
            }
            if !running {
                break 'outer;
            }
        }
        self.writer.publish();
        self.engine
    }
}
