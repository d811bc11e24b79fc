//! Fan-out: engine events in, pre-framed WebSocket frames out, shared by every subscriber.
//!
//! One **hub** thread reads every engine shard's event ring. Per public channel
//! (`book.<SYM>`, `bbo.<SYM>`, `trades.<SYM>`) it collects the events of one pass, then, in
//! one short critical section, applies them to the channel's state (the L2 book, the last
//! BBO, recent trades) and publishes them as one [`Chunk`]: a complete binary WebSocket
//! frame (and a JSON text frame when JSON subscribers exist), encoded once. Chunks go into
//! a bounded per-channel ring. The hub's cost per event is O(1) whatever the number of
//! subscribers; per pass it wakes each subscriber of a changed channel once.
//!
//! Each connection keeps a cursor per subscription and, when woken, takes every chunk
//! after its cursor (reference-counted bytes, no copy) and writes them with one vectored
//! write. A connection that falls more than the ring behind is never waited for: book and
//! BBO subscriptions get a fresh snapshot flagged as a resync; trades subscriptions get an
//! explicit gap notice. Server memory is bounded by the rings, not by slow clients.
//!
//! Because state update and chunk publication happen under the same lock, a snapshot
//! taken under that lock is valid exactly at the last published chunk: a subscriber
//! starts at the next chunk and never sees a delta twice or misses one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tickgate_engine::l2::Level;
use tickgate_engine::runtime::EngineHandle;
use tickgate_engine::{BookSnapshot, Event, Instrument, L2Book, Price, Qty, RingReader};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::protocol::{
    self, bin, channel_id, frame_header, json, ChannelKind, Opcode, TradeMsg, FLAG_RESYNC,
    RECENT_TRADES, SNAPSHOT_DEPTH_MAX, TRADES_KEPT,
};

/// A pass's worth of one channel's messages, framed once.
#[derive(Debug)]
pub struct Chunk {
    /// Position in the channel's ring.
    pub index: u64,
    /// Sequence of the first message (0 for a chunk that only asks for a resync).
    pub first_seq: u64,
    /// Sequence of the last message.
    pub last_seq: u64,
    /// Complete binary frame.
    pub bin: Bytes,
    /// Complete JSON text frame; `None` when no JSON subscriber existed at publication.
    pub json: Option<Bytes>,
    /// The hub could not follow the engine here: subscribers must take a fresh snapshot.
    pub resync: bool,
    /// Messages in the chunk.
    pub messages: u32,
}

/// How a connection is woken. One per connection, shared with every channel it follows.
#[derive(Debug, Default)]
pub struct ConnWaker {
    id: u64,
    notify: Notify,
    pending: AtomicBool,
}

impl ConnWaker {
    /// A waker with a process-unique id.
    pub fn new() -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(ConnWaker { id: NEXT.fetch_add(1, Ordering::Relaxed), ..ConnWaker::default() })
    }

    /// Wakes the connection (at most one wake-up is pending at a time). Returns whether
    /// this call woke it (`false`: a wake-up was already pending).
    pub fn wake(&self) -> bool {
        let woke = !self.pending.swap(true, Ordering::AcqRel);
        if woke {
            self.notify.notify_one();
        }
        woke
    }

    /// Call before draining: later wakes will be delivered.
    pub fn clear(&self) {
        self.pending.store(false, Ordering::Relaxed);
        // Pairs with the fence after a chunk is published: either the hub sees `false` and
        // wakes us, or our next look at the ring heads sees its chunk (store-load order).
        fence(Ordering::SeqCst);
    }

    /// Resolves after the next wake (or at once if one is stored).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

/// What a channel remembers to build snapshots.
#[derive(Debug)]
struct State {
    book: L2Book,
    /// Last BBO: (seq, ts, bid, ask).
    bbo: Option<(u64, u64, Level, Level)>,
    trades: VecDeque<TradeMsg>,
    last_seq: u64,
    last_ts: u64,
    json_subscribers: usize,
    subscribers: Vec<Arc<ConnWaker>>,
}

/// One public channel.
#[derive(Debug)]
pub struct Channel {
    /// Wire id.
    pub id: u32,
    /// Name, e.g. `book.BTC-USD`.
    pub name: String,
    /// Kind.
    pub kind: ChannelKind,
    /// The instrument.
    pub instrument: Instrument,
    slots: Box<[ArcSwapOption<Chunk>]>,
    mask: u64,
    head: AtomicU64,
    last_seq: AtomicU64,
    state: Mutex<State>,
}

/// Where a (re)subscribing connection starts: the snapshot frame and the next chunk index.
#[derive(Debug)]
pub struct Start {
    /// Next chunk to read.
    pub cursor: u64,
    /// Snapshot as a complete frame in the subscriber's format.
    pub snapshot: Bytes,
    /// Sequence the snapshot is valid at.
    pub seq: u64,
}

impl Channel {
    fn new(instrument: &Instrument, kind: ChannelKind, capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        Channel {
            id: channel_id(instrument.id, kind),
            name: format!("{}.{}", kind.prefix(), instrument.spec.symbol),
            kind,
            instrument: instrument.clone(),
            slots: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
            mask: capacity as u64 - 1,
            head: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            state: Mutex::new(State {
                book: L2Book::default(),
                bbo: None,
                trades: VecDeque::with_capacity(TRADES_KEPT),
                last_seq: 0,
                last_ts: 0,
                json_subscribers: 0,
                subscribers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this module; the state is plain
        // data and stays usable, so recover rather than take every connection down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chunks in the ring.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Index one past the last published chunk.
    #[inline]
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Last sequence published on the channel.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// The chunk at `index`, if it is published and not yet overwritten.
    #[inline]
    pub fn chunk(&self, index: u64) -> Option<Arc<Chunk>> {
        if index >= self.head() {
            return None;
        }
        self.slots[(index & self.mask) as usize].load_full().filter(|c| c.index == index)
    }

    /// Registers a subscriber and returns its snapshot and starting cursor.
    pub fn subscribe(&self, waker: &Arc<ConnWaker>, json: bool, depth: usize) -> Start {
        let view = {
            let mut state = self.lock();
            if !state.subscribers.iter().any(|w| w.id == waker.id) {
                state.subscribers.push(Arc::clone(waker));
                if json {
                    state.json_subscribers += 1;
                }
            }
            self.view(&state, depth)
        };
        self.start(view, json, false)
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&self, waker: &ConnWaker, json: bool) {
        let mut state = self.lock();
        let before = state.subscribers.len();
        state.subscribers.retain(|w| w.id != waker.id);
        if json && state.subscribers.len() < before {
            state.json_subscribers = state.json_subscribers.saturating_sub(1);
        }
    }

    /// The next chunk index and the last sequence published, read together.
    pub fn position(&self) -> (u64, u64) {
        let state = self.lock();
        (self.head(), state.last_seq)
    }

    /// The book's top `depth` levels and the timestamp of its last change, valid at the
    /// snapshot's `seq` (the same sequence WebSocket deltas carry). Book channels only.
    pub fn book(&self, depth: usize) -> (BookSnapshot, u64) {
        let state = self.lock();
        (state.book.snapshot(depth.clamp(1, SNAPSHOT_DEPTH_MAX)), state.last_ts)
    }

    /// Up to `limit` most recent trades, newest first, and the last trade sequence.
    /// Trades channels only.
    pub fn recent_trades(&self, limit: usize) -> (Vec<TradeMsg>, u64) {
        let state = self.lock();
        (state.trades.iter().rev().take(limit).copied().collect(), state.last_seq)
    }

    /// A fresh snapshot flagged as a resync, for a subscriber that fell behind.
    pub fn resync(&self, json: bool, depth: usize) -> Start {
        let view = self.view(&self.lock(), depth);
        self.start(view, json, true)
    }

    /// Copies what a snapshot needs, under the lock (the hub waits on it): encoding happens
    /// after the lock is released.
    fn view(&self, state: &State, depth: usize) -> View {
        let data = match self.kind {
            ChannelKind::Book => {
                ViewData::Book(state.book.snapshot(depth.clamp(1, SNAPSHOT_DEPTH_MAX)))
            }
            ChannelKind::Bbo => {
                ViewData::Bbo(state.bbo.unwrap_or((0, 0, (Price(0), Qty(0)), (Price(0), Qty(0)))))
            }
            ChannelKind::Trades => {
                let skip = state.trades.len().saturating_sub(RECENT_TRADES);
                ViewData::Trades(state.trades.iter().skip(skip).copied().collect())
            }
        };
        View { cursor: self.head(), seq: state.last_seq, ts: state.last_ts, data }
    }

    fn start(&self, view: View, json: bool, resync: bool) -> Start {
        let flags = if resync { FLAG_RESYNC } else { 0 };
        let i = &self.instrument;
        let View { cursor, seq, ts, data } = view;
        let (mut b, mut j) = (Vec::new(), String::new());
        match data {
            ViewData::Book(snap) => {
                if json {
                    json::book_snapshot(&mut j, i, &self.name, resync, ts, &snap);
                } else {
                    bin::book_snapshot(&mut b, self.id, flags, ts, &snap);
                }
            }
            ViewData::Bbo((seq, ts, bid, ask)) => {
                if json {
                    json::bbo(
                        &mut j,
                        i,
                        &self.name,
                        flags | protocol::FLAG_SNAPSHOT,
                        seq,
                        ts,
                        bid,
                        ask,
                    );
                } else {
                    bin::bbo(&mut b, self.id, flags | protocol::FLAG_SNAPSHOT, seq, ts, bid, ask);
                }
            }
            ViewData::Trades(trades) => {
                if json {
                    json::trades_snapshot(&mut j, i, &self.name, resync, seq, ts, &trades);
                } else {
                    bin::trades_snapshot(&mut b, self.id, flags, seq, ts, &trades);
                }
            }
        }
        let snapshot = if json { json_frame(&j) } else { bin_frame(&b) };
        Start { cursor, snapshot, seq }
    }
}

/// A channel's state as of one chunk index, copied out of the lock.
struct View {
    cursor: u64,
    seq: u64,
    ts: u64,
    data: ViewData,
}

enum ViewData {
    Book(BookSnapshot),
    Bbo((u64, u64, Level, Level)),
    Trades(Vec<TradeMsg>),
}

fn bin_frame(payload: &[u8]) -> Bytes {
    protocol::frame(Opcode::Binary, payload).into()
}

fn json_frame(objects: &str) -> Bytes {
    let mut out = Vec::with_capacity(objects.len() + 12);
    frame_header(&mut out, Opcode::Text, objects.len() + 2);
    out.push(b'[');
    out.extend_from_slice(objects.as_bytes());
    out.push(b']');
    out.into()
}

/// Every channel, by name and by dense index.
#[derive(Debug)]
pub struct Directory {
    channels: Vec<Arc<Channel>>,
    by_name: HashMap<String, usize>,
}

impl Directory {
    /// Channels for every instrument and kind.
    pub fn new(instruments: &[Instrument], ring_chunks: usize) -> Self {
        let mut channels = Vec::with_capacity(instruments.len() * 3);
        let mut by_name = HashMap::new();
        for i in instruments {
            for kind in ChannelKind::ALL {
                let channel = Arc::new(Channel::new(i, kind, ring_chunks));
                by_name.insert(channel.name.clone(), channels.len());
                channels.push(channel);
            }
        }
        Directory { channels, by_name }
    }

    /// A channel by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Channel>> {
        self.by_name.get(name).map(|&n| &self.channels[n])
    }

    /// Whether `symbol` is an instrument.
    pub fn has_symbol(&self, symbol: &str) -> bool {
        self.channels.iter().any(|c| c.instrument.spec.symbol == symbol)
    }

    /// Every channel.
    pub fn all(&self) -> &[Arc<Channel>] {
        &self.channels
    }

    fn index(&self, instrument: u32, kind: ChannelKind) -> usize {
        instrument as usize * 3 + kind as usize - 1
    }
}

/// Largest binary payload one chunk carries; a busier pass is split over several chunks.
const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Events the hub takes from one shard ring per pass.
const HUB_READ_MAX: usize = 16_384;

/// The hub thread. Stops when dropped or on [`Hub::stop`].
#[derive(Debug)]
pub struct Hub {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Wakes the hub; given to the engine as its publish hook.
#[derive(Clone, Debug, Default)]
pub struct HubWake(Arc<OnceLock<std::thread::Thread>>);

impl HubWake {
    /// Unparks the hub thread (cheap when it is running).
    pub fn wake(&self) {
        if let Some(thread) = self.0.get() {
            thread.unpark();
        }
    }
}

impl Hub {
    /// Starts the hub over `engine`'s shards, publishing into `directory`.
    pub fn start(
        engine: EngineHandle,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        wake: HubWake,
        pacing: Pacing,
        orders: Arc<crate::orders::OrderStore>,
    ) -> Hub {
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<RingReader> =
            (0..engine.shards()).filter_map(|s| engine.reader(s)).collect();
        let mut worker = HubWorker {
            engine,
            readers,
            publisher: Publisher::new(directory, metrics),
            events: Vec::with_capacity(HUB_READ_MAX),
            pacing,
            retry: Vec::new(),
            orders,
        };
        // Snapshots first: the readers were created before, so every later delta is seen.
        worker.reset_books();
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fanout-hub".into())
            .spawn(move || worker.run(&s))
            .expect("spawning the hub thread at start-up");
        let _ = wake.0.set(thread.thread().clone());
        Hub { stop, thread: Some(thread) }
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.halt();
    }
}

struct HubWorker {
    engine: EngineHandle,
    readers: Vec<RingReader>,
    publisher: Publisher,
    events: Vec<Event>,
    pacing: Pacing,
    /// Book channels whose reset failed, retried every pass.
    retry: Vec<Arc<Channel>>,
    /// Users' orders and fills, fed with the execution reports.
    orders: Arc<crate::orders::OrderStore>,
}

/// How the hub spaces its passes.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// Shortest pass.
    pub min_pass: Duration,
    /// Longest pass (bounds the latency pacing can add).
    pub max_pass: Duration,
    /// Connection wake-ups (hence writes) per second the hub aims not to exceed.
    pub writes_per_sec: u64,
}

impl HubWorker {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            let started = Instant::now();
            let mut got = 0usize;
            let mut lapped = false;
            let mut behind = false;
            for r in 0..self.readers.len() {
                self.events.clear();
                let outcome = self.readers[r].read(&mut self.events, HUB_READ_MAX);
                got += outcome.read;
                behind |= outcome.read == HUB_READ_MAX;
                if outcome.missed > 0 {
                    lapped = true;
                    self.publisher.metrics.hub_missed.fetch_add(outcome.missed, Ordering::Relaxed);
                }
                for e in &self.events {
                    match e {
                        Event::Exec(r) => self.orders.apply(r),
                        _ => self.publisher.ingest(e),
                    }
                }
            }
            self.publisher.metrics.hub_events.fetch_add(got as u64, Ordering::Relaxed);
            // Users' reports of this pass reach the history file before anyone can have
            // acted on them over the network (a killed process then loses none).
            self.orders.flush_history();
            self.orders.mark_stored(self.readers.iter().map(RingReader::cursor).enumerate());
            self.publisher.publish();
            let mut stale = self.publisher.take_resets();
            if lapped {
                // Deltas were lost: rebuild every book from the engine rather than wait for
                // the next delta of each to reveal its gap.
                let directory = Arc::clone(&self.publisher.directory);
                stale = directory
                    .all()
                    .iter()
                    .filter(|c| c.kind == ChannelKind::Book)
                    .cloned()
                    .collect();
            }
            stale.append(&mut self.retry);
            stale.sort_by_key(|c| c.id);
            stale.dedup_by_key(|c| c.id);
            for channel in stale {
                if !self.reset_book(&channel) {
                    self.retry.push(channel);
                }
            }
            // Pace passes so that the writes they cause stay within the budget: each woken
            // connection will make one write syscall, and on a small machine those dominate.
            // Few connections: short passes, low latency. Many: longer passes, larger writes.
            let woken = self.publisher.take_woken();
            let budget = self.pacing.writes_per_sec.max(1);
            let paced = Duration::from_micros(woken.saturating_mul(1_000_000) / budget);
            let pass =
                paced.clamp(self.pacing.min_pass, self.pacing.max_pass.max(self.pacing.min_pass));
            if got == 0 {
                std::thread::park_timeout(Duration::from_millis(50));
            } else if behind {
                // Still behind the engine: no pause until caught up.
            } else if let Some(rest) = pass.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }

    fn reset_books(&mut self) {
        let directory = Arc::clone(&self.publisher.directory);
        for c in directory.all().iter().filter(|c| c.kind == ChannelKind::Book) {
            if !self.reset_book(c) {
                self.retry.push(Arc::clone(c));
            }
        }
    }

    /// Replaces a book channel's state with an engine snapshot; `false` if the engine could
    /// not answer now (its queue is full), to be retried on the next pass.
    fn reset_book(&mut self, channel: &Arc<Channel>) -> bool {
        match self.engine.book_snapshot(channel.instrument.id, usize::MAX) {
            Ok(snapshot) => {
                self.publisher.reset(channel, &snapshot);
                true
            }
            Err(e) => {
                tracing::warn!(channel = %channel.name, "cannot snapshot the book yet: {e}");
                false
            }
        }
    }
}

/// The producer side of the fan-out, without a thread: ingest engine events, then
/// publish every changed channel as chunks. The hub thread drives one; benches drive one
/// directly.
#[derive(Debug)]
pub struct Publisher {
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    pending: Vec<Vec<Event>>,
    resets: Vec<Arc<Channel>>,
    bin: Vec<u8>,
    json: String,
    woken: u64,
}

impl Publisher {
    /// A publisher into `directory`'s channels.
    pub fn new(directory: Arc<Directory>, metrics: Arc<Metrics>) -> Self {
        let pending = (0..directory.all().len()).map(|_| Vec::new()).collect();
        Publisher {
            directory,
            metrics,
            pending,
            resets: Vec::new(),
            bin: Vec::with_capacity(CHUNK_BYTES_MAX + 1024),
            json: String::new(),
            woken: 0,
        }
    }

    /// Queues an event for its channel (private execution reports are not public data).
    #[inline]
    pub fn ingest(&mut self, e: &Event) {
        let (instrument, kind) = match e {
            Event::BookDelta(d) => (d.instrument, ChannelKind::Book),
            Event::Bbo(b) => (b.instrument, ChannelKind::Bbo),
            Event::Trade(t) => (t.instrument, ChannelKind::Trades),
            Event::Exec(_) => return,
        };
        let at = self.directory.index(instrument.0, kind);
        if let Some(p) = self.pending.get_mut(at) {
            p.push(*e);
        }
    }

    /// Publishes every channel with queued events.
    pub fn publish(&mut self) {
        for at in 0..self.pending.len() {
            if !self.pending[at].is_empty() {
                self.publish_channel(at);
            }
        }
    }

    /// Book channels whose deltas broke sequence: the caller must [`Publisher::reset`] them.
    pub fn take_resets(&mut self) -> Vec<Arc<Channel>> {
        std::mem::take(&mut self.resets)
    }

    /// Restarts a book channel from `snapshot` and tells its subscribers to resync.
    pub fn reset(&mut self, channel: &Channel, snapshot: &BookSnapshot) {
        self.metrics.hub_resyncs.fetch_add(1, Ordering::Relaxed);
        let mut state = channel.lock();
        state.book = L2Book::from_snapshot(snapshot);
        state.last_seq = snapshot.seq.0;
        state.last_ts = tickgate_engine::runtime::now_nanos().0;
        channel.last_seq.store(snapshot.seq.0, Ordering::Release);
        let chunk = Chunk {
            index: channel.head(),
            first_seq: 0,
            last_seq: snapshot.seq.0,
            bin: Bytes::new(),
            json: None,
            resync: true,
            messages: 0,
        };
        self.store(channel, &mut state, chunk);
    }

    fn store(&mut self, channel: &Channel, state: &mut State, chunk: Chunk) {
        let index = chunk.index;
        channel.slots[(index & channel.mask) as usize].store(Some(Arc::new(chunk)));
        channel.head.store(index + 1, Ordering::Release);
        fence(Ordering::SeqCst); // see `ConnWaker::clear`
        self.metrics.hub_chunks.fetch_add(1, Ordering::Relaxed);
        for w in &state.subscribers {
            self.woken += u64::from(w.wake());
        }
    }

    /// Connections woken since the last call.
    pub fn take_woken(&mut self) -> u64 {
        std::mem::take(&mut self.woken)
    }

    /// Applies a channel's pending events to its state and publishes them as chunks.
    fn publish_channel(&mut self, at: usize) {
        let channel = Arc::clone(&self.directory.all()[at]);
        let mut events = std::mem::take(&mut self.pending[at]);
        let mut state = channel.lock();
        let with_json = state.json_subscribers > 0;
        let mut first_seq = 0u64;
        let mut messages = 0u32;
        let mut needs_reset = false;
        self.bin.clear();
        self.json.clear();
        let i = &channel.instrument;
        for e in &events {
            match *e {
                Event::BookDelta(d) => {
                    if d.seq.0 <= state.book.seq().0 {
                        continue; // already in the snapshot the state started from
                    }
                    if state.book.apply(&d).is_err() {
                        needs_reset = true;
                        break;
                    }
                    bin::book_delta(
                        &mut self.bin,
                        channel.id,
                        d.seq.0,
                        d.ts.0,
                        d.side,
                        d.price,
                        d.qty,
                    );
                    if with_json {
                        self.comma(messages);
                        json::book_delta(
                            &mut self.json,
                            i,
                            &channel.name,
                            d.seq.0,
                            d.ts.0,
                            d.side,
                            d.price,
                            d.qty,
                        );
                    }
                    (state.last_seq, state.last_ts) = (d.seq.0, d.ts.0);
                }
                Event::Bbo(b) => {
                    let (bid, ask) = ((b.bid_price, b.bid_qty), (b.ask_price, b.ask_qty));
                    state.bbo = Some((b.seq.0, b.ts.0, bid, ask));
                    bin::bbo(&mut self.bin, channel.id, 0, b.seq.0, b.ts.0, bid, ask);
                    if with_json {
                        self.comma(messages);
                        json::bbo(&mut self.json, i, &channel.name, 0, b.seq.0, b.ts.0, bid, ask);
                    }
                    (state.last_seq, state.last_ts) = (b.seq.0, b.ts.0);
                }
                Event::Trade(t) => {
                    let msg = TradeMsg {
                        seq: t.seq.0,
                        ts: t.ts.0,
                        price: t.price,
                        qty: t.qty,
                        taker_side: t.taker_side,
                        maker_order: t.maker_order.0,
                        taker_order: t.taker_order.0,
                    };
                    if state.last_seq != 0 && msg.seq > state.last_seq + 1 {
                        // The hub itself lost trades (its engine reader was lapped): say so.
                        bin::gap(
                            &mut self.bin,
                            channel.id,
                            msg.ts,
                            state.last_seq + 1,
                            msg.seq - 1,
                        );
                        if with_json {
                            self.comma(messages);
                            json::gap(
                                &mut self.json,
                                &channel.name,
                                msg.ts,
                                state.last_seq + 1,
                                msg.seq - 1,
                            );
                        }
                        messages += 1;
                    }
                    if state.trades.len() == TRADES_KEPT {
                        state.trades.pop_front();
                    }
                    state.trades.push_back(msg);
                    bin::trade(&mut self.bin, channel.id, &msg);
                    if with_json {
                        self.comma(messages);
                        json::trade(&mut self.json, i, &channel.name, &msg);
                    }
                    (state.last_seq, state.last_ts) = (msg.seq, msg.ts);
                }
                Event::Exec(_) => continue,
            }
            if first_seq == 0 {
                first_seq = state.last_seq;
            }
            messages += 1;
            if self.bin.len() >= CHUNK_BYTES_MAX {
                self.flush_chunk(&channel, &mut state, first_seq, messages, with_json);
                first_seq = 0;
                messages = 0;
            }
        }
        if messages > 0 {
            self.flush_chunk(&channel, &mut state, first_seq, messages, with_json);
        }
        channel.last_seq.store(state.last_seq, Ordering::Release);
        drop(state);
        events.clear();
        self.pending[at] = events; // keep the allocation
        if needs_reset {
            self.resets.push(channel);
        }
    }

    fn comma(&mut self, messages: u32) {
        if messages > 0 {
            self.json.push(',');
        }
    }

    fn flush_chunk(
        &mut self,
        channel: &Channel,
        state: &mut State,
        first_seq: u64,
        messages: u32,
        with_json: bool,
    ) {
        let mut framed = Vec::with_capacity(self.bin.len() + 10);
        frame_header(&mut framed, Opcode::Binary, self.bin.len());
        framed.extend_from_slice(&self.bin);
        let chunk = Chunk {
            index: channel.head(),
            first_seq,
            last_seq: state.last_seq,
            bin: framed.into(),
            json: with_json.then(|| json_frame(&self.json)),
            resync: false,
            messages,
        };
        self.bin.clear();
        self.json.clear();
        self.store(channel, state, chunk);
    }
}
