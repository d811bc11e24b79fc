//! Fan-out: engine events in, pre-framed WebSocket frames out, shared by every subscriber.
//!
//! Three parts, each owned by one kind of thread:
//!
//! - [`hub`]: one **hub** thread reads every engine shard's event ring. Per public channel
//!   (`book.<SYM>`, `bbo.<SYM>`, `trades.<SYM>`, `candles.<SYM>.<interval>`) it collects
//!   the events of one pass, then, in one short critical section, applies them to the
//!   channel's state (the L2 book, the last BBO, recent trades; candles live in
//!   [`crate::candles`]) and publishes them as one [`Chunk`]: a complete binary
//!   WebSocket frame (and a JSON text frame when JSON subscribers exist), encoded once.
//!   Chunks go into a bounded per-channel ring ([`Channel`]). Then it wakes the writers:
//!   never a connection, so its cost is O(1) per event and O(writers) per pass, whatever
//!   the number of subscribers.
//! - [`writer`]: a few **writer** threads (one per core by default) each own a share of
//!   the connections. A round finds the channels whose ring moved, visits each connection
//!   that follows one of them once, and writes everything after its cursors (shared,
//!   reference-counted bytes, no copy) with one non-blocking vectored write. Rounds are
//!   self-clocked: the more connections are busy, the longer a round and the bigger each
//!   write, with no pacing knob.
//! - the connection's own task ([`crate::ws::connection`]) handles what the client sends,
//!   pings and heartbeats, and takes over the writing when the socket is full, until it
//!   drains.
//!
//! A connection that falls more than the ring behind is never waited for: book and BBO
//! subscriptions get a fresh snapshot flagged as a resync; trades subscriptions get an
//! explicit gap notice. Server memory is bounded by the rings, not by slow clients.
//!
//! Because state update and chunk publication happen under the same lock, a snapshot
//! taken under that lock is valid exactly at the last published chunk: a subscriber
//! starts at the next chunk and never sees a delta twice or misses one.

pub mod hub;
pub mod link;
pub mod outbox;
pub mod rest;
pub mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tickgate_engine::{Bbo, BookSnapshot, Instrument, L2Book, Price, Qty, Seq, UnixNanos};

use crate::candles::{Candle, Candles, CANDLES_KEPT};
use crate::protocol::{
    self, bin, channel_id, frame_header, json, ChannelKind, Opcode, TradeMsg, FLAG_RESYNC,
    RECENT_TRADES, SNAPSHOT_DEPTH_MAX, TRADES_KEPT,
};

pub use hub::{MarketData, Pacing, Publisher};
pub use rest::RestPolicy;
pub use writer::Writers;

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

impl Chunk {
    /// The complete frame in JSON or binary; `None` for JSON when it was not encoded.
    #[inline]
    pub fn frame(&self, json: bool) -> Option<&Bytes> {
        if json {
            self.json.as_ref()
        } else {
            Some(&self.bin)
        }
    }
}

/// A writer's own copy of the channels' rings: the chunks it has read, by channel and slot.
///
/// A writer reads each chunk once for every connection that follows its channel. From the
/// ring that is an arc-swap load and a reference taken and dropped, atomic operations on
/// cache lines the hub and the other writers touch too: at 10,000 subscribers they were a
/// sixth of the writer thread (`perf`, docs/BENCHMARKS.md). From here the ring is read once
/// per chunk and writer, and each connection's read after that is a plain load (the
/// writer's user-space share fell from 32 to 22 %). A chunk stays here until a newer one
/// takes its slot: at most one more ring's worth per channel is kept alive than the rings
/// keep.
#[derive(Debug, Default)]
pub struct ChunkCache {
    /// By the channels' dense index: their slots (empty until first read).
    channels: Vec<Box<[Option<Arc<Chunk>>]>>,
}

impl ChunkCache {
    /// The chunk at `index` of `channel` (one directory's: its dense index picks the
    /// table), if it is published; read from the ring unless this cache has it already.
    /// A chunk the ring has just overwritten may still be here: chunks never change once
    /// published, so it is still the right one.
    pub fn get(&mut self, channel: &Channel, index: u64) -> Option<&Arc<Chunk>> {
        if self.channels.len() <= channel.index {
            self.channels.resize_with(channel.index + 1, Default::default);
        }
        let slots = &mut self.channels[channel.index];
        if slots.len() as u64 != channel.capacity() {
            *slots = (0..channel.capacity()).map(|_| None).collect();
        }
        let slot = &mut slots[(index & channel.mask) as usize];
        if slot.as_ref().is_none_or(|c| c.index != index) {
            *slot = Some(channel.chunk(index)?);
        }
        slot.as_ref()
    }
}

/// Where a channel's publication stands ([`Channel::position`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelPosition {
    /// Index of the next chunk to be published.
    pub head: u64,
    /// Sequence of the last message published.
    pub last_seq: u64,
}

/// What a channel remembers to build snapshots.
#[derive(Debug)]
struct State {
    book: L2Book,
    /// Last BBO event.
    bbo: Option<Bbo>,
    trades: VecDeque<TradeMsg>,
    last_seq: u64,
    last_ts: u64,
    json_subscribers: usize,
    subscribers: usize,
}

/// One public channel.
#[derive(Debug)]
pub struct Channel {
    /// Wire id.
    pub id: u32,
    /// Dense index in the [`Directory`] (writers keep per-channel tables by it).
    pub index: usize,
    /// Name, e.g. `book.BTC-USD`.
    pub name: String,
    /// Kind.
    pub kind: ChannelKind,
    /// The instrument.
    pub instrument: Instrument,
    /// Candles channels: the store their snapshots and updates come from.
    candles: Option<Arc<Candles>>,
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
    fn new(
        instrument: &Instrument,
        kind: ChannelKind,
        index: usize,
        capacity: usize,
        candles: &Arc<Candles>,
    ) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        Channel {
            id: channel_id(instrument.id, kind),
            index,
            name: kind.name(&instrument.spec.symbol),
            kind,
            instrument: instrument.clone(),
            candles: kind.interval().map(|_| Arc::clone(candles)),
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
                subscribers: 0,
            }),
        }
    }

    /// Starts a trades channel with recent trades from before this process's hub (another
    /// node's, on a gateway node's start; the journal's, after a restart), merged with any
    /// it has: they are listed and replayed to subscribers as its own; later trades at or
    /// below the newest are skipped (see the hub).
    pub fn seed_trades(&self, trades: &[TradeMsg]) {
        if trades.is_empty() {
            return;
        }
        let mut state = self.lock();
        let mut seeded: Vec<TradeMsg> = state.trades.iter().chain(trades).copied().collect();
        seeded.sort_by_key(|t| t.seq);
        seeded.dedup_by_key(|t| t.seq);
        let skip = seeded.len().saturating_sub(TRADES_KEPT);
        state.trades = seeded.into_iter().skip(skip).collect();
        if let Some(last) = state.trades.back().map(|t| (t.seq, t.ts)) {
            if last.0 > state.last_seq {
                (state.last_seq, state.last_ts) = last;
                self.last_seq.store(last.0, Ordering::Release);
            }
        }
    }

    /// Starts a best bid/offer channel at what the engine says now (a recovered engine, or
    /// a replica, has had a market before), unless it is further already.
    pub fn seed_bbo(&self, bbo: Bbo) {
        let mut state = self.lock();
        if bbo.seq.0 > state.last_seq {
            (state.last_seq, state.last_ts) = (bbo.seq.0, bbo.ts.0);
            state.bbo = Some(bbo);
            self.last_seq.store(bbo.seq.0, Ordering::Release);
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

    /// Counts a new subscriber and returns its snapshot and starting cursor. Who reads the
    /// ring is the writers' business: the channel only counts (JSON is encoded only while
    /// JSON subscribers exist).
    pub fn subscribe(&self, json: bool, depth: usize) -> Start {
        let view = {
            let mut state = self.lock();
            state.subscribers += 1;
            if json {
                state.json_subscribers += 1;
            }
            self.view(&state, depth)
        };
        self.start(view, json, false)
    }

    /// A fresh snapshot for a subscriber that subscribes again (counted once already).
    pub fn restart(&self, json: bool, depth: usize) -> Start {
        let view = self.view(&self.lock(), depth);
        self.start(view, json, false)
    }

    /// Removes a subscriber counted by [`Channel::subscribe`].
    pub fn unsubscribe(&self, json: bool) {
        let mut state = self.lock();
        state.subscribers = state.subscribers.saturating_sub(1);
        if json {
            state.json_subscribers = state.json_subscribers.saturating_sub(1);
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers
    }

    /// The next chunk index and the last sequence published, read together.
    pub fn position(&self) -> ChannelPosition {
        let state = self.lock();
        ChannelPosition { head: self.head(), last_seq: state.last_seq }
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
            ChannelKind::Bbo => ViewData::Bbo(state.bbo.unwrap_or(Bbo {
                instrument: self.instrument.id,
                seq: Seq(0),
                ts: UnixNanos(0),
                bid_price: Price(0),
                bid_qty: Qty(0),
                ask_price: Price(0),
                ask_qty: Qty(0),
            })),
            ChannelKind::Trades => {
                let skip = state.trades.len().saturating_sub(RECENT_TRADES);
                ViewData::Trades(state.trades.iter().skip(skip).copied().collect())
            }
            // Read from the store, which the hub updates just before it publishes: a
            // snapshot may already hold a pass's trades whose update follows. Updates are
            // whole candles, so applying one twice changes nothing.
            _ => ViewData::Candles(self.candles.as_ref().map_or_else(Vec::new, |store| {
                let n = self.kind.interval().unwrap_or(0);
                store.candles(self.instrument.id.0 as usize, n, depth.clamp(1, CANDLES_KEPT))
            })),
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
            ViewData::Bbo(bbo) => {
                let (seq, ts) = (bbo.seq.0, bbo.ts.0);
                let (bid, ask) = ((bbo.bid_price, bbo.bid_qty), (bbo.ask_price, bbo.ask_qty));
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
            ViewData::Candles(candles) => {
                if json {
                    json::candles_snapshot(&mut j, i, &self.name, resync, seq, ts, &candles);
                } else {
                    bin::candles_snapshot(&mut b, self.id, flags, seq, ts, &candles);
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
    Bbo(Bbo),
    Trades(Vec<TradeMsg>),
    Candles(Vec<Candle>),
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
    /// Per shard, the stamp of the last command whose events the channels (and candles)
    /// have all taken.
    applied: Mutex<Vec<u64>>,
}

impl Directory {
    /// Records that the channels took every event of `shard`'s commands up to the one
    /// stamped `ts` (the hub, after each pass).
    pub fn mark_applied(&self, shard: usize, ts: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if applied.len() <= shard {
            applied.resize(shard + 1, 0);
        }
        applied[shard] = applied[shard].max(ts);
    }

    /// The stamp of `shard`'s last command whose events the channels have all taken.
    pub fn applied_through(&self, shard: usize) -> u64 {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.get(shard).copied().unwrap_or(0)
    }

    /// Channels for every instrument and kind; candles channels read `candles`.
    pub fn new(instruments: &[Instrument], ring_chunks: usize, candles: &Arc<Candles>) -> Self {
        let mut channels = Vec::with_capacity(instruments.len() * ChannelKind::ALL.len());
        let mut by_name = HashMap::new();
        for i in instruments {
            for kind in ChannelKind::ALL {
                let at = channels.len();
                let channel = Arc::new(Channel::new(i, kind, at, ring_chunks, candles));
                by_name.insert(channel.name.clone(), channels.len());
                channels.push(channel);
            }
        }
        Directory { channels, by_name, applied: Mutex::new(Vec::new()) }
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

    /// Dense index of an instrument's channel of `kind`.
    fn index(&self, instrument: u32, kind: ChannelKind) -> usize {
        instrument as usize * ChannelKind::ALL.len() + kind as usize - 1
    }
}

/// What a journal's replay brought back that the engine's state does not hold: each
/// instrument's last best bid/offer event (the time the top last changed).
#[derive(Debug, Default)]
pub struct Replayed {
    bbo: Mutex<HashMap<u32, Bbo>>,
}

impl Replayed {
    /// Keeps `event` if it is a best bid/offer (called for every replayed event).
    pub fn record(&self, event: &tickgate_engine::Event) {
        if let tickgate_engine::Event::Bbo(b) = event {
            self.bbo.lock().unwrap_or_else(|e| e.into_inner()).insert(b.instrument.0, *b);
        }
    }

    /// The last best bid/offer event replayed for `instrument`.
    pub fn bbo(&self, instrument: tickgate_engine::InstrumentId) -> Option<Bbo> {
        self.bbo.lock().unwrap_or_else(|e| e.into_inner()).get(&instrument.0).copied()
    }
}
