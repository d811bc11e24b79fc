//! The hub: every engine shard's public events in, one chunk per changed channel and
//! pass out, then a wake-up for each writer ([`MarketData`], run by the "fanout-hub"
//! [`crate::events::Pump`]), and the [`Publisher`] that frames them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tickgate_engine::runtime::EngineHandle;
use tickgate_engine::{BookSnapshot, Event, L2Book, SharedClock};

use super::{json_frame, Channel, Chunk, Directory, State, Writers};
use crate::candles::Candles;
use crate::events::{Batch, EventConsumer};
use crate::metrics::Metrics;
use crate::protocol::{bin, frame_header, json, ChannelKind, Opcode, TradeMsg, TRADES_KEPT};

/// Largest binary payload one chunk carries; a busier pass is split over several chunks.
const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Passes per writer round at least (see [`Pacing::pass`]).
const ROUND_PASSES: u32 = 8;
/// Longest pass, however long the writers' rounds. At 10,000 subscribers a round takes
/// 150 to 400 ms; a 4 ms cap made each visit of a connection read the chunks of dozens of
/// passes per channel, and about 40 % of the writer's time went to counting references
/// on them (docs/BENCHMARKS.md).
const PASS_MAX: Duration = Duration::from_millis(32);
/// Longest idle wait: the engine's publish hook wakes the hub sooner.
const IDLE_MAX: Duration = Duration::from_millis(50);

/// How the hub spaces its passes.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// Shortest pass: events of one pass and channel share a chunk (one frame), so a longer
    /// pass means fewer, larger chunks. Writers are not paced by it: they write whatever
    /// is new when they come round, however many passes that spans.
    pub min_pass: Duration,
}

impl Pacing {
    /// The hub pump's pacing: each pass lasts the configured shortest, or an eighth of
    /// the writers' latest round when that is longer. A writer visits each connection once
    /// per round and writes every chunk published since, so passes much shorter than a
    /// round only multiply the frames per write (hundreds per connection at 1,000 busy
    /// ones) without making anything fresher than the round allows.
    pub fn for_pump(self, writers: Arc<Writers>) -> crate::events::Pacing {
        crate::events::Pacing { idle: IDLE_MAX, pass: Box::new(move || self.pass(writers.round())) }
    }

    /// The pass after a writers' round of `round`.
    fn pass(self, round: Duration) -> Duration {
        (round / ROUND_PASSES).clamp(self.min_pass, PASS_MAX.max(self.min_pass))
    }
}

/// The market-data consumer: every public event into its channel, one chunk per changed
/// channel and pass, then a wake-up for each writer. Also feeds the candles (trades).
pub struct MarketData {
    engine: EngineHandle,
    publisher: Publisher,
    /// Woken after every pass that published something.
    writers: Arc<Writers>,
    /// Book channels whose reset failed, retried every pass.
    retry: Vec<Arc<Channel>>,
    /// A lapped read lost deltas: every book is rebuilt at the end of the pass.
    lapped: bool,
    /// Candles, fed with every pass's trades.
    candles: Arc<Candles>,
    trades: Vec<tickgate_engine::Trade>,
    /// Per shard, the stamp of the last command whose events were all read.
    complete: Vec<u64>,
}

impl std::fmt::Debug for MarketData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketData").field("retry", &self.retry.len()).finish_non_exhaustive()
    }
}

impl MarketData {
    /// Publishes into `directory`'s channels, after a snapshot of every book: make it
    /// after the pump's source, so that every later delta is seen.
    pub fn new(
        engine: EngineHandle,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        writers: Arc<Writers>,
        candles: Arc<Candles>,
        replayed: &super::Replayed,
    ) -> Self {
        let clock = Arc::clone(engine.clock());
        let mut market = MarketData {
            engine,
            publisher: Publisher::new(directory, metrics, clock),
            writers,
            retry: Vec::new(),
            lapped: false,
            candles,
            trades: Vec::new(),
            complete: Vec::new(),
        };
        let directory = Arc::clone(&market.publisher.directory);
        for c in directory.all().iter().filter(|c| c.kind == ChannelKind::Book) {
            if !market.reset_book(c) {
                market.retry.push(Arc::clone(c));
            }
        }
        for c in directory.all().iter().filter(|c| c.kind == ChannelKind::Trades) {
            market.start_trades(c);
        }
        for c in directory.all().iter().filter(|c| c.kind == ChannelKind::Bbo) {
            market.start_bbo(c, replayed);
        }
        market
    }

    /// Starts a best bid/offer channel at the engine's top and sequence (one answer: they
    /// agree), with the time of the replayed event that set them when there is one (else
    /// now: it was so then at the latest).
    fn start_bbo(&mut self, channel: &Arc<Channel>, replayed: &super::Replayed) {
        let id = channel.instrument.id;
        match self.engine.channel_seqs(id) {
            Ok(seqs) if seqs.bbo.0 > 0 => {
                let ts = match replayed.bbo(id) {
                    Some(b) if b.seq == seqs.bbo => b.ts,
                    _ => self.engine.clock().now(),
                };
                channel.seed_bbo(tickgate_engine::Bbo {
                    instrument: id,
                    seq: seqs.bbo,
                    ts,
                    bid_price: seqs.bid.0,
                    bid_qty: seqs.bid.1,
                    ask_price: seqs.ask.0,
                    ask_qty: seqs.ask.1,
                });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(channel = %channel.name, "best bid/offer unknown: {e}"),
        }
    }

    /// Starts a trades channel at the engine's last trade (a recovered engine, or a
    /// replica, has traded before): its first trade then follows its snapshot's sequence.
    /// Its recent trades are the candles store's tape (saved, then the journal's replay on
    /// top; another node's on a gateway node) when that reaches the engine's last trade.
    fn start_trades(&mut self, channel: &Arc<Channel>) {
        match self.engine.channel_seqs(channel.instrument.id) {
            Ok(seqs) => {
                let tape = self.candles.tape(channel.instrument.id.0 as usize);
                if tape.last().is_some_and(|t| t.seq == seqs.trades.0) {
                    channel.seed_trades(&tape.iter().map(TradeMsg::from).collect::<Vec<_>>());
                }
                let mut state = channel.lock();
                // Seeded further (a gateway node's start: see `Channel::seed_trades`)?
                if state.last_seq < seqs.trades.0 {
                    state.last_seq = seqs.trades.0;
                    channel.last_seq.store(seqs.trades.0, Ordering::Release);
                }
            }
            // The first trade then shows as a gap notice from 1: honest, if untidy.
            Err(e) => tracing::warn!(channel = %channel.name, "trades sequence unknown: {e}"),
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

    /// Book channels to rebuild from the engine this pass.
    fn stale_books(&mut self) -> Vec<Arc<Channel>> {
        let mut stale = self.publisher.take_resets();
        if std::mem::take(&mut self.lapped) {
            // Deltas were lost: rebuild every book from the engine rather than wait for
            // the next delta of each to reveal its gap.
            stale = self
                .publisher
                .directory
                .all()
                .iter()
                .filter(|c| c.kind == ChannelKind::Book)
                .cloned()
                .collect();
        }
        stale.append(&mut self.retry);
        stale.sort_by_key(|c| c.id);
        stale.dedup_by_key(|c| c.id);
        stale
    }
}

impl EventConsumer for MarketData {
    fn on_events(&mut self, batch: &Batch<'_>) {
        self.publisher
            .metrics
            .hub_events_total
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        for e in batch.events {
            if let Event::Trade(t) = e {
                self.trades.push(*t);
            }
            self.publisher.ingest(e);
        }
        // A read that reached the head holds every event of its last command.
        if let (true, Some(last)) = (batch.caught_up, batch.events.last()) {
            if self.complete.len() <= batch.shard {
                self.complete.resize(batch.shard + 1, 0);
            }
            self.complete[batch.shard] = last.ts().0;
        }
    }

    fn on_missed(&mut self, _shard: usize, missed: u64) {
        self.lapped = true;
        self.publisher.metrics.hub_missed_total.fetch_add(missed, Ordering::Relaxed);
    }

    fn on_pass(&mut self) {
        self.candles.apply(&self.trades);
        self.trades.clear();
        self.publisher.publish();
        for (shard, ts) in self.complete.iter().enumerate() {
            self.publisher.directory.mark_applied(shard, *ts);
        }
        for channel in self.stale_books() {
            if !self.reset_book(&channel) {
                self.retry.push(channel);
            }
        }
        if self.publisher.take_published() {
            self.writers.wake();
        }
    }
}

/// What encoding one event did.
enum Encoded {
    /// Nothing to send (already in the snapshot, or a private report).
    Skipped,
    /// One message (or a gap notice and a message) appended.
    Message,
    /// A delta the book cannot take: the channel must be rebuilt from a snapshot.
    BookBroken,
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
    /// Whether a chunk was stored since the last [`Publisher::take_published`].
    published: bool,
    /// The channel being published has no subscriber: its state follows the events (for
    /// the snapshot of whoever subscribes next, and REST), but nothing is encoded or
    /// stored in its ring.
    silent: bool,
    /// The time of a book's reset.
    clock: SharedClock,
}

impl Publisher {
    /// A publisher into `directory`'s channels.
    pub fn new(directory: Arc<Directory>, metrics: Arc<Metrics>, clock: SharedClock) -> Self {
        let pending = (0..directory.all().len()).map(|_| Vec::new()).collect();
        Publisher {
            directory,
            metrics,
            pending,
            resets: Vec::new(),
            bin: Vec::with_capacity(CHUNK_BYTES_MAX + 1024),
            json: String::new(),
            published: false,
            silent: false,
            clock,
        }
    }

    /// Queues an event for its channel (private execution reports are not public data).
    #[inline]
    pub fn ingest(&mut self, e: &Event) {
        let (instrument, kind) = match e {
            Event::BookDelta(d) => (d.instrument, ChannelKind::Book),
            Event::Bbo(b) => (b.instrument, ChannelKind::Bbo),
            Event::Trade(t) => (t.instrument, ChannelKind::Trades),
            Event::Exec(_) | Event::Transfer(_) => return,
        };
        let at = self.directory.index(instrument.0, kind);
        if let Some(p) = self.pending.get_mut(at) {
            p.push(*e);
        }
        if kind == ChannelKind::Trades {
            // A candles channel needs the pass's first and last trades (their times).
            for kind in &ChannelKind::ALL[ChannelKind::Candles1s as usize - 1..] {
                let at = self.directory.index(instrument.0, *kind);
                if let Some(p) = self.pending.get_mut(at) {
                    p.truncate(1);
                    p.push(*e);
                }
            }
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
        self.metrics.hub_resyncs_total.fetch_add(1, Ordering::Relaxed);
        let mut state = channel.lock();
        state.book = L2Book::from_snapshot(snapshot);
        state.last_seq = snapshot.seq.0;
        state.last_ts = self.clock.now().0;
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

    /// Puts a chunk in the channel's ring. Nobody is woken here: the pass wakes the
    /// writers once, after every channel is published. `_locked` is the channel's state
    /// guard: storing under it is what makes a snapshot valid exactly at the head.
    fn store(&mut self, channel: &Channel, _locked: &mut State, chunk: Chunk) {
        let index = chunk.index;
        channel.slots[(index & channel.mask) as usize].store(Some(Arc::new(chunk)));
        // Release: a writer that sees the new head sees the chunk in its slot.
        channel.head.store(index + 1, Ordering::Release);
        self.metrics.hub_chunks_total.fetch_add(1, Ordering::Relaxed);
        self.published = true;
    }

    /// Whether chunks were published since the last call.
    pub fn take_published(&mut self) -> bool {
        std::mem::take(&mut self.published)
    }

    /// Publishes the candles a pass's trades changed (from the store, which the hub has
    /// updated with them): the pass's first and last trades are the events queued.
    fn publish_candles(&mut self, at: usize, store: &Candles, interval: usize) {
        let channel = Arc::clone(&self.directory.all()[at]);
        let trades = (self.pending[at].first().copied(), self.pending[at].last().copied());
        self.pending[at].clear();
        let (Some(Event::Trade(first)), Some(Event::Trade(last))) = trades else {
            return;
        };
        let length = crate::candles::INTERVALS[interval].1;
        let from = first.ts.0 - first.ts.0 % length;
        let candles = store.since(channel.instrument.id.0 as usize, interval, from);
        if candles.is_empty() {
            return;
        }
        let mut state = channel.lock();
        let with_json = state.json_subscribers > 0;
        let (first_seq, ts) = (state.last_seq + 1, last.ts.0);
        if state.subscribers == 0 {
            state.last_seq += candles.len() as u64;
            state.last_ts = ts;
            channel.last_seq.store(state.last_seq, Ordering::Release);
            return;
        }
        self.bin.clear();
        self.json.clear();
        for (n, c) in candles.iter().enumerate() {
            let seq = first_seq + n as u64;
            bin::candle(&mut self.bin, channel.id, seq, ts, c);
            if with_json {
                self.comma(n as u32);
                json::candle(&mut self.json, &channel.instrument, &channel.name, seq, ts, c);
            }
        }
        state.last_seq += candles.len() as u64;
        state.last_ts = ts;
        self.flush_chunk(&channel, &mut state, first_seq, candles.len() as u32, with_json);
        channel.last_seq.store(state.last_seq, Ordering::Release);
    }

    /// Applies a channel's pending events to its state and publishes them as chunks.
    fn publish_channel(&mut self, at: usize) {
        let channel = Arc::clone(&self.directory.all()[at]);
        if let (Some(store), Some(interval)) = (&channel.candles, channel.kind.interval()) {
            return self.publish_candles(at, store, interval);
        }
        let mut events = std::mem::take(&mut self.pending[at]);
        let mut state = channel.lock();
        let with_json = state.json_subscribers > 0;
        // Read under the lock a subscriber takes its snapshot under: one that subscribes
        // after this pass starts from the state the pass leaves, with the ring's head.
        self.silent = state.subscribers == 0;
        let mut first_seq = 0u64;
        let mut messages = 0u32;
        let mut needs_reset = false;
        self.bin.clear();
        self.json.clear();
        for e in &events {
            match self.encode(&channel, &mut state, with_json, &mut messages, e) {
                Encoded::Skipped => continue,
                Encoded::BookBroken => {
                    needs_reset = true;
                    break;
                }
                Encoded::Message => {}
            }
            if first_seq == 0 {
                first_seq = state.last_seq;
            }
            messages += 1;
            if !self.silent && self.bin.len() >= CHUNK_BYTES_MAX {
                self.flush_chunk(&channel, &mut state, first_seq, messages, with_json);
                first_seq = 0;
                messages = 0;
            }
        }
        if messages > 0 && !self.silent {
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

    /// Applies one event to the channel's state and appends its message (binary, and JSON
    /// when a JSON subscriber exists) to the pass's buffers.
    #[inline]
    fn encode(
        &mut self,
        channel: &Channel,
        state: &mut State,
        with_json: bool,
        messages: &mut u32,
        e: &Event,
    ) -> Encoded {
        match e {
            Event::BookDelta(d) => self.encode_delta(channel, state, with_json, *messages, d),
            Event::Bbo(b) if self.encode_bbo(channel, state, with_json, *messages, b) => {
                Encoded::Message
            }
            Event::Bbo(_) => Encoded::Skipped,
            Event::Trade(t) if self.encode_trade(channel, state, with_json, messages, t) => {
                Encoded::Message
            }
            Event::Trade(_) => Encoded::Skipped,
            Event::Exec(_) | Event::Transfer(_) => Encoded::Skipped,
        }
    }

    #[inline]
    fn encode_delta(
        &mut self,
        channel: &Channel,
        state: &mut State,
        with_json: bool,
        messages: u32,
        d: &tickgate_engine::BookDelta,
    ) -> Encoded {
        if d.seq.0 <= state.book.seq().0 {
            return Encoded::Skipped; // already in the snapshot the state started from
        }
        if state.book.apply(d).is_err() {
            return Encoded::BookBroken;
        }
        let (id, seq, ts) = (channel.id, d.seq.0, d.ts.0);
        (state.last_seq, state.last_ts) = (seq, ts);
        if self.silent {
            return Encoded::Message;
        }
        bin::book_delta(&mut self.bin, id, seq, ts, d.side, d.price, d.qty);
        if with_json {
            self.comma(messages);
            let (i, name) = (&channel.instrument, &channel.name);
            json::book_delta(&mut self.json, i, name, seq, ts, d.side, d.price, d.qty);
        }
        Encoded::Message
    }

    #[inline]
    fn encode_bbo(
        &mut self,
        channel: &Channel,
        state: &mut State,
        with_json: bool,
        messages: u32,
        b: &tickgate_engine::Bbo,
    ) -> bool {
        if b.seq.0 <= state.last_seq {
            return false; // already in the state the channel started from
        }
        let (bid, ask) = ((b.bid_price, b.bid_qty), (b.ask_price, b.ask_qty));
        state.bbo = Some(*b);
        (state.last_seq, state.last_ts) = (b.seq.0, b.ts.0);
        if self.silent {
            return true;
        }
        bin::bbo(&mut self.bin, channel.id, 0, b.seq.0, b.ts.0, bid, ask);
        if with_json {
            self.comma(messages);
            let (i, name) = (&channel.instrument, &channel.name);
            json::bbo(&mut self.json, i, name, 0, b.seq.0, b.ts.0, bid, ask);
        }
        true
    }

    /// A trade, after a gap notice when trades before it never reached the hub (its
    /// engine reader was lapped); the notice counts as a message of its own. `false`: the
    /// trade is older than the channel's start, nothing was encoded.
    #[inline]
    fn encode_trade(
        &mut self,
        channel: &Channel,
        state: &mut State,
        with_json: bool,
        messages: &mut u32,
        t: &tickgate_engine::Trade,
    ) -> bool {
        if t.seq.0 <= state.last_seq {
            // Already counted in the sequence the channel started from.
            return false;
        }
        let msg = TradeMsg::from(t);
        if msg.seq > state.last_seq + 1 && !self.silent {
            let (from, to) = (state.last_seq + 1, msg.seq - 1);
            bin::gap(&mut self.bin, channel.id, msg.ts, from, to);
            if with_json {
                self.comma(*messages);
                json::gap(&mut self.json, &channel.name, msg.ts, from, to);
            }
            *messages += 1;
        }
        if state.trades.len() == TRADES_KEPT {
            state.trades.pop_front();
        }
        state.trades.push_back(msg);
        (state.last_seq, state.last_ts) = (msg.seq, msg.ts);
        if self.silent {
            return true;
        }
        bin::trade(&mut self.bin, channel.id, &msg);
        if with_json {
            self.comma(*messages);
            json::trade(&mut self.json, &channel.instrument, &channel.name, &msg);
        }
        true
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

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::{
        BookDelta, Engine, EngineSpec, InstrumentId, OrderId, Price, Qty, Seq, Side, Trade,
        UnixNanos,
    };

    /// A pass is an eighth of the writers' round, within the configured shortest and
    /// 32 ms: 10,000 subscribers' rounds of 150 to 400 ms get passes of 19 to 32 ms, not
    /// the 4 ms that made each visit read dozens of chunks per channel.
    #[test]
    fn passes_follow_the_writers_round_within_their_bounds() {
        let pacing = Pacing { min_pass: Duration::from_micros(200) };
        let ms = Duration::from_millis;
        assert_eq!(pacing.pass(Duration::ZERO), Duration::from_micros(200));
        assert_eq!(pacing.pass(ms(1)), Duration::from_micros(200));
        assert_eq!(pacing.pass(ms(16)), ms(2));
        assert_eq!(pacing.pass(ms(160)), ms(20));
        assert_eq!(pacing.pass(ms(400)), ms(32));
        assert_eq!(pacing.pass(Duration::from_secs(5)), PASS_MAX);
        // A shortest pass above the cap wins over it.
        assert_eq!(Pacing { min_pass: ms(50) }.pass(ms(1)), ms(50));
        assert_eq!(Pacing { min_pass: ms(50) }.pass(Duration::from_secs(5)), ms(50));
    }

    fn publisher() -> (Arc<Directory>, Publisher) {
        let engine = Engine::new(&EngineSpec::default(), |_| true).expect("default markets");
        let n = engine.instruments().len();
        let candles = Arc::new(Candles::new(n, None).expect("no file"));
        let directory = Arc::new(Directory::new(engine.instruments(), 64, &candles));
        let clock = tickgate_engine::WallClock::shared();
        let publisher = Publisher::new(Arc::clone(&directory), Arc::default(), clock);
        (directory, publisher)
    }

    fn delta(seq: u64, price: i64, qty: i64) -> Event {
        Event::BookDelta(BookDelta {
            instrument: InstrumentId(0),
            seq: Seq(seq),
            ts: UnixNanos(1_000 + seq),
            side: Side::Buy,
            price: Price(price),
            qty: Qty(qty),
        })
    }

    fn trade(seq: u64) -> Event {
        Event::Trade(Trade {
            instrument: InstrumentId(0),
            seq: Seq(seq),
            ts: UnixNanos(1_000 + seq),
            price: Price(100),
            qty: Qty(seq as i64),
            taker_side: Side::Sell,
            maker_order: OrderId(1),
            taker_order: OrderId(2),
        })
    }

    /// A channel nobody follows is not encoded: its ring stays empty while its state (the
    /// book REST serves, the recent trades) follows every event; whoever subscribes next
    /// starts from a snapshot at the last sequence and the first chunk continues it.
    #[test]
    fn a_channel_without_subscribers_keeps_its_state_and_stores_nothing() {
        let (directory, mut publisher) = publisher();
        let book = Arc::clone(directory.get("book.BTC-USD").expect("book"));
        let trades = Arc::clone(directory.get("trades.BTC-USD").expect("trades"));
        for (seq, price) in [(1, 100), (2, 101), (3, 102)] {
            publisher.ingest(&delta(seq, price, 5));
        }
        publisher.ingest(&trade(1));
        publisher.ingest(&trade(2));
        publisher.publish();
        assert!(!publisher.take_published(), "nothing stored");
        assert_eq!((book.head(), trades.head()), (0, 0));
        assert_eq!((book.last_seq(), trades.last_seq()), (3, 2));
        let (snapshot, _) = book.book(10);
        let bids: Vec<i64> = snapshot.bids.iter().map(|l| l.0 .0).collect();
        assert_eq!(bids, [102, 101, 100]);
        assert_eq!(trades.recent_trades(10).0.len(), 2);

        let start = book.subscribe(false, 10);
        assert_eq!((start.seq, start.cursor), (3, 0));
        publisher.ingest(&delta(4, 100, 0));
        publisher.ingest(&trade(3));
        publisher.publish();
        assert!(publisher.take_published());
        let chunk = book.chunk(start.cursor).expect("the subscriber's first chunk");
        assert_eq!((chunk.first_seq, chunk.last_seq, chunk.messages), (4, 4, 1));
        assert_eq!(trades.head(), 0, "the trades channel still has no subscriber");
        assert_eq!(trades.last_seq(), 3);

        book.unsubscribe(false);
        publisher.ingest(&delta(5, 103, 1));
        publisher.publish();
        assert_eq!((book.head(), book.last_seq()), (1, 5), "silent again, state moves on");
    }
}
