//! The engine state machine: `process(command) -> events`, one command at a time, for the
//! instruments one shard owns. No clock, no randomness, no hash-order iteration reaches
//! its output: the same commands give the same events, byte for byte.
//!
//! Order of events for one command: execution reports and trades as matching happens,
//! then one `BookDelta` per touched level (coalesced: a level's final quantity after the
//! command), then a `Bbo` if the top of book changed.
//!
//! One concept per file:
//! - this file: the [`Engine`] and what it is built from, and its read-only views;
//! - `dispatch.rs`: [`Engine::process`] and the validation and effects of each command;
//! - `matching.rs`: matching an order against the book, settlement, and the level and
//!   top-of-book events, with the runtime assertions that guard them;
//! - `codec.rs`: the engine state as bytes, for snapshots;
//! - `digest.rs`: the state digest, and the full invariant check tests run.

mod codec;
mod digest;
mod dispatch;
mod matching;

use crate::accounts::Ledger;
use crate::book::{BookSnapshot, OrderBook};
use crate::event::Event;
use crate::idempotency::{KeyRecord, KeyTable};
use crate::instrument::{default_markets, Asset, Instrument, InstrumentError, InstrumentSpec};
use crate::types::{AccountId, InstrumentId, Price, Qty, Seq, Side, UnixNanos};

/// Where events go. The engine only ever pushes; it never waits for a reader.
pub trait EventSink {
    /// Takes one event.
    fn push(&mut self, event: Event);
}

impl EventSink for Vec<Event> {
    #[inline]
    fn push(&mut self, event: Event) {
        Vec::push(self, event);
    }
}

/// What an engine is built from.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    /// Asset table; `AssetId` indexes it.
    pub assets: Vec<Asset>,
    /// Instrument table; `InstrumentId` indexes it.
    pub instruments: Vec<InstrumentSpec>,
    /// Accounts `0..accounts_max` exist (with zero balances) from the start.
    pub accounts_max: u32,
    /// Resting orders one book can hold.
    pub orders_per_book_max: usize,
}

impl Default for EngineSpec {
    fn default() -> Self {
        let (assets, instruments) = default_markets();
        EngineSpec { assets, instruments, accounts_max: 4096, orders_per_book_max: 1 << 20 }
    }
}

/// Running totals, for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Commands processed.
    pub commands: u64,
    /// Commands (or replaces) rejected.
    pub rejects: u64,
    /// Trades executed.
    pub trades: u64,
    /// Events emitted.
    pub events: u64,
}

/// Top of book: (bid price, bid qty, ask price, ask qty), zeros for an empty side.
type Top = (Price, Qty, Price, Qty);

/// One owned instrument: its book and its public channel sequences.
#[derive(Debug)]
struct Market {
    instrument: Instrument,
    book: OrderBook,
    trades_seq: Seq,
    book_seq: Seq,
    bbo_seq: Seq,
    top: Top,
    /// Trading halted: new orders and replaces are rejected, cancels work.
    halted: bool,
}

impl Market {
    fn top(&self) -> Top {
        let (bp, bq) = self.book.best(Side::Buy).unwrap_or((Price(0), Qty(0)));
        let (ap, aq) = self.book.best(Side::Sell).unwrap_or((Price(0), Qty(0)));
        (bp, bq, ap, aq)
    }
}

/// The state of one engine shard.
#[derive(Debug)]
pub struct Engine {
    assets: Vec<Asset>,
    instruments: Vec<Instrument>,
    markets: Vec<Option<Market>>,
    ledger: Ledger,
    touched: Vec<(Side, Price, Qty)>,
    counters: EngineCounters,
    max_order_id: u64,
    /// Idempotency keys of new orders (see [`crate::idempotency`]).
    keys: KeyTable,
}

/// The last sequence of each public channel of one instrument ([`Engine::channel_seqs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelSeqs {
    /// Trades channel (also the last trade id).
    pub trades: Seq,
    /// Book channel.
    pub book: Seq,
    /// Best bid and offer channel.
    pub bbo: Seq,
    /// The best bid now (what the bbo channel's last event said): price and quantity,
    /// zeros for an empty side.
    pub bid: (Price, Qty),
    /// The best offer now, as `bid`.
    pub ask: (Price, Qty),
}

impl Engine {
    /// An engine owning the instruments for which `owns` is true (all, for one shard).
    pub fn new(
        spec: &EngineSpec,
        owns: impl Fn(InstrumentId) -> bool,
    ) -> Result<Self, InstrumentError> {
        let mut instruments = Vec::with_capacity(spec.instruments.len());
        for (i, s) in spec.instruments.iter().enumerate() {
            if instruments.iter().any(|x: &Instrument| x.spec.symbol == s.symbol) {
                return Err(InstrumentError::Duplicate(s.symbol.clone()));
            }
            let instrument = Instrument::new(InstrumentId(i as u32), s.clone(), &spec.assets)?;
            if instrument.notional(s.price_max, s.qty_max).is_none() {
                return Err(InstrumentError::Grid {
                    symbol: s.symbol.clone(),
                    what: "max price x max quantity overflows the quote asset",
                });
            }
            instruments.push(instrument);
        }
        let markets = instruments
            .iter()
            .map(|i| {
                owns(i.id).then(|| Market {
                    instrument: i.clone(),
                    book: OrderBook::new(spec.orders_per_book_max),
                    trades_seq: Seq(0),
                    book_seq: Seq(0),
                    bbo_seq: Seq(0),
                    top: (Price(0), Qty(0), Price(0), Qty(0)),
                    halted: false,
                })
            })
            .collect();
        Ok(Engine {
            ledger: Ledger::new(spec.accounts_max, spec.assets.len(), instruments.len()),
            assets: spec.assets.clone(),
            instruments,
            markets,
            touched: Vec::with_capacity(64),
            counters: EngineCounters::default(),
            max_order_id: 0,
            keys: KeyTable::default(),
        })
    }

    /// Largest order id any new order has carried (accepted or not): ids handed out after
    /// a restart start above it.
    pub fn max_order_id(&self) -> u64 {
        self.max_order_id
    }

    /// The asset table.
    pub fn assets(&self) -> &[Asset] {
        &self.assets
    }

    /// The full instrument table (including instruments other shards own).
    pub fn instruments(&self) -> &[Instrument] {
        &self.instruments
    }

    /// Whether this engine owns `instrument`.
    pub fn owns(&self, instrument: InstrumentId) -> bool {
        matches!(self.markets.get(instrument.0 as usize), Some(Some(_)))
    }

    /// Balances, positions and report sequences.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Hands every account whose balances changed since the last call, with its balances
    /// and positions, to `f` (the runtime publishes them for lock-free reads).
    pub fn take_changed_balances(
        &mut self,
        f: impl FnMut(AccountId, &[crate::Balance], &[crate::Qty]),
    ) {
        self.ledger.take_changed(f);
    }

    /// Running totals.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// The book of an owned instrument.
    pub fn book(&self, instrument: InstrumentId) -> Option<&OrderBook> {
        self.markets.get(instrument.0 as usize)?.as_ref().map(|m| &m.book)
    }

    /// Aggregated snapshot of the top `depth` levels, valid at the current book sequence.
    pub fn book_snapshot(&self, instrument: InstrumentId, depth: usize) -> Option<BookSnapshot> {
        let m = self.markets.get(instrument.0 as usize)?.as_ref()?;
        Some(m.book.snapshot(depth, m.book_seq))
    }

    /// Whether trading in an owned instrument is halted (`None`: not owned).
    pub fn is_halted(&self, instrument: InstrumentId) -> Option<bool> {
        Some(self.markets.get(instrument.0 as usize)?.as_ref()?.halted)
    }

    /// Last sequences of the public channels of an owned instrument.
    pub fn channel_seqs(&self, instrument: InstrumentId) -> Option<ChannelSeqs> {
        let m = self.markets.get(instrument.0 as usize)?.as_ref()?;
        let (bid_price, bid_qty, ask_price, ask_qty) = m.top();
        Some(ChannelSeqs {
            trades: m.trades_seq,
            book: m.book_seq,
            bbo: m.bbo_seq,
            bid: (bid_price, bid_qty),
            ask: (ask_price, ask_qty),
        })
    }

    /// The remembered record of `key` for `account`, if any (a retry is answered from it).
    pub fn key_record(
        &self,
        account: AccountId,
        key: crate::idempotency::IdempotencyKey,
        now: UnixNanos,
    ) -> Option<KeyRecord> {
        self.keys.find(account, key, now)
    }

    /// Every remembered idempotency key, accounts in id order.
    pub fn key_records(&self) -> impl Iterator<Item = (AccountId, KeyRecord)> + '_ {
        self.keys.records()
    }
}
