//! The engine state machine: `process(command) -> events`, one command at a time, for the
//! instruments one shard owns. No clock, no randomness, no hash-order iteration reaches
//! its output: the same commands give the same events, byte for byte.
//!
//! Order of events for one command: execution reports and trades as matching happens,
//! then one `BookDelta` per touched level (coalesced: a level's final quantity after the
//! command), then a `Bbo` if the top of book changed.

use crate::accounts::Ledger;
use crate::binary::{ByteReader, Fnv64};
use crate::book::{BookSnapshot, OrderBook, RestingOrder};
use crate::command::{
    CancelOrder, Command, CommandKind, NewOrder, OrderType, RejectReason, ReplaceOrder, StpMode,
    Transfer,
};
use crate::event::{Bbo, BookDelta, Event, ExecKind, ExecReport, Trade};
use crate::idempotency::{fingerprint, KeyRecord, KeyTable};
use crate::instrument::{default_markets, Asset, Instrument, InstrumentError, InstrumentSpec};
use crate::state_error::StateError;
use crate::types::{
    AccountId, Amount, AssetId, InstrumentId, OrderId, Price, Qty, Seq, Side, UnixNanos,
};

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

/// An order while it is being processed (an incoming order or a re-priced one).
#[derive(Clone, Copy, Debug)]
struct Live {
    id: OrderId,
    client_order_id: u64,
    account: AccountId,
    instrument: InstrumentId,
    side: Side,
    order_type: OrderType,
    price: Price,
    leaves: Qty,
    filled: Qty,
    stp: StpMode,
}

impl Live {
    fn from_new(o: &NewOrder) -> Self {
        Live {
            id: o.order_id,
            client_order_id: o.client_order_id,
            account: o.account,
            instrument: o.instrument,
            side: o.side,
            order_type: o.order_type,
            price: if o.order_type == OrderType::Market { Price(0) } else { o.price },
            leaves: o.qty,
            filled: Qty::ZERO,
            stp: o.stp,
        }
    }

    fn from_resting(o: &RestingOrder, instrument: InstrumentId) -> Self {
        Live {
            id: o.id,
            client_order_id: o.client_order_id,
            account: o.account,
            instrument,
            side: o.side,
            order_type: o.order_type,
            price: o.price,
            leaves: o.leaves,
            filled: o.filled,
            stp: o.stp,
        }
    }
}

/// The per-command working set that matching needs, borrowed out of the engine so the
/// book, the ledger and the event sink can be used together.
struct Ctx<'a, S: EventSink> {
    market: &'a mut Market,
    ledger: &'a mut Ledger,
    touched: &'a mut Vec<(Side, Price, Qty)>,
    counters: &'a mut EngineCounters,
    out: &'a mut S,
    ts: UnixNanos,
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

fn report(
    ledger: &mut Ledger,
    o: &Live,
    ts: UnixNanos,
    kind: ExecKind,
    reason: RejectReason,
    last: (Price, Qty),
) -> Event {
    let seq = if ledger.contains(o.account) { ledger.next_exec_seq(o.account) } else { Seq(0) };
    Event::Exec(ExecReport {
        account: o.account,
        seq,
        ts,
        kind,
        reason,
        instrument: o.instrument,
        order_id: o.id,
        client_order_id: o.client_order_id,
        side: o.side,
        order_type: o.order_type,
        price: o.price,
        last_price: last.0,
        last_qty: last.1,
        // A refused cancel or replace leaves the order as it was: its open quantity stands.
        leaves_qty: if matches!(kind, ExecKind::Canceled | ExecKind::Rejected) {
            Qty::ZERO
        } else {
            o.leaves
        },
        cum_qty: o.filled,
    })
}

impl<S: EventSink> Ctx<'_, S> {
    #[inline]
    fn emit(&mut self, event: Event) {
        self.counters.events += 1;
        self.out.push(event);
    }

    #[inline]
    fn report(&mut self, o: &Live, kind: ExecKind, reason: RejectReason, last: (Price, Qty)) {
        // The one place a rejection is counted (with `Engine::reject`).
        if kind.is_rejection() {
            self.counters.rejects += 1;
        }
        let event = report(self.ledger, o, self.ts, kind, reason, last);
        self.emit(event);
    }

    #[inline]
    fn touch(&mut self, side: Side, price: Price, qty: Qty) {
        match self.touched.iter_mut().rev().find(|e| e.0 == side && e.1 == price) {
            Some(entry) => entry.2 = qty,
            None => self.touched.push((side, price, qty)),
        }
    }

    /// What an open order of `o.leaves` keeps on hold: quote at the limit for buys (none
    /// for market buys, which are funded fill by fill), base for sells.
    fn hold_of(&self, o: &Live) -> (AssetId, Amount) {
        let spec = &self.market.instrument.spec;
        match o.side {
            Side::Buy if o.order_type == OrderType::Market => (spec.quote, Amount(0)),
            Side::Buy => (
                spec.quote,
                self.market.instrument.notional(o.price, o.leaves).expect("validated at accept"),
            ),
            Side::Sell => {
                (spec.base, self.market.instrument.base_amount(o.leaves).expect("validated"))
            }
        }
    }

    /// Removes a resting order, releases its hold and reports it canceled.
    fn cancel_resting(&mut self, slot: u32, reason: RejectReason) {
        let (order, level_qty) = self.market.book.remove(slot);
        let live = Live::from_resting(&order, self.market.instrument.id);
        let (asset, amount) = self.hold_of(&live);
        self.ledger.release(order.account, asset, amount);
        self.touch(order.side, order.price, level_qty);
        self.report(&live, ExecKind::Canceled, reason, (Price(0), Qty(0)));
    }

    /// Matches `t` against the other side until it is filled, no longer marketable, or
    /// stopped. Returns why it stopped early (`None` when nothing remains to say).
    fn match_incoming(&mut self, t: &mut Live) -> RejectReason {
        let opposite = t.side.opposite();
        let (base, quote) = (self.market.instrument.spec.base, self.market.instrument.spec.quote);
        while t.leaves.0 > 0 {
            let Some(slot) = self.market.book.front(opposite) else {
                return RejectReason::NoLiquidity;
            };
            let maker = *self.market.book.order(slot);
            let marketable = t.order_type == OrderType::Market
                || match t.side {
                    Side::Buy => maker.price <= t.price,
                    Side::Sell => maker.price >= t.price,
                };
            if !marketable {
                return RejectReason::NoLiquidity;
            }
            if maker.account == t.account && t.stp != StpMode::None {
                match t.stp {
                    StpMode::CancelIncoming => return RejectReason::SelfTrade,
                    StpMode::CancelBoth => {
                        self.cancel_resting(slot, RejectReason::SelfTrade);
                        return RejectReason::SelfTrade;
                    }
                    _ => {
                        self.cancel_resting(slot, RejectReason::SelfTrade);
                        continue;
                    }
                }
            }
            let mut qty = Qty(t.leaves.0.min(maker.leaves.0));
            if t.order_type == OrderType::Market && t.side == Side::Buy {
                let available = self.ledger.balance(t.account, quote).available();
                let affordable = self.market.instrument.affordable_qty(maker.price, available);
                qty = Qty(qty.0.min(affordable.0));
                if qty.0 == 0 {
                    return RejectReason::InsufficientFunds;
                }
            }
            // Settlement. Prices and quantities are within the instrument's validated band,
            // so these amounts cannot overflow.
            let instrument = &self.market.instrument;
            let notional = instrument.notional(maker.price, qty).expect("within band");
            let base_amount = instrument.base_amount(qty).expect("within max qty");
            let (buyer, seller) = match t.side {
                Side::Buy => (t.account, maker.account),
                Side::Sell => (maker.account, t.account),
            };
            let buyer_hold = match (t.side, t.order_type) {
                (Side::Buy, OrderType::Market) => Amount(0),
                (Side::Buy, _) => instrument.notional(t.price, qty).expect("within band"),
                (Side::Sell, _) => notional,
            };
            self.ledger.release(seller, base, base_amount);
            self.ledger.release(buyer, quote, buyer_hold);
            self.ledger.settle_leg(buyer, seller, quote, notional);
            self.ledger.settle_leg(seller, buyer, base, base_amount);
            self.ledger.add_position(buyer, instrument.id, qty);
            self.ledger.add_position(seller, instrument.id, Qty(-qty.0));

            let (maker_after, level_qty) = self.market.book.fill(slot, qty);
            self.touch(opposite, maker.price, level_qty);
            t.leaves.0 -= qty.0;
            t.filled.0 += qty.0;
            self.market.trades_seq = self.market.trades_seq.next();
            self.counters.trades += 1;
            self.emit(Event::Trade(Trade {
                instrument: self.market.instrument.id,
                seq: self.market.trades_seq,
                ts: self.ts,
                price: maker.price,
                qty,
                taker_side: t.side,
                maker_order: maker.id,
                taker_order: t.id,
            }));
            let maker_live = Live::from_resting(&maker_after, self.market.instrument.id);
            let fill_kind = |leaves: Qty| {
                if leaves.0 == 0 {
                    ExecKind::Filled
                } else {
                    ExecKind::PartiallyFilled
                }
            };
            self.report(
                &maker_live,
                fill_kind(maker_after.leaves),
                RejectReason::None,
                (maker.price, qty),
            );
            let taker = *t;
            self.report(&taker, fill_kind(t.leaves), RejectReason::None, (maker.price, qty));
        }
        RejectReason::None
    }

    /// Matches an accepted (funded, held) order, then rests or cancels what is left.
    fn execute(&mut self, t: &mut Live) {
        let stop = self.match_incoming(t);
        if t.leaves.0 == 0 {
            return;
        }
        let rests = matches!(t.order_type, OrderType::Limit | OrderType::PostOnly)
            && !matches!(stop, RejectReason::SelfTrade);
        if rests {
            let resting = RestingOrder {
                id: t.id,
                client_order_id: t.client_order_id,
                account: t.account,
                price: t.price,
                leaves: t.leaves,
                filled: t.filled,
                side: t.side,
                order_type: t.order_type,
                stp: t.stp,
            };
            match self.market.book.insert(resting) {
                Ok((_, level_qty)) => {
                    self.touch(t.side, t.price, level_qty);
                    return;
                }
                Err(_) => return self.cancel_remainder(t, RejectReason::BookFull),
            }
        }
        self.cancel_remainder(t, stop);
    }

    fn cancel_remainder(&mut self, t: &Live, reason: RejectReason) {
        let (asset, amount) = self.hold_of(t);
        self.ledger.release(t.account, asset, amount);
        self.report(t, ExecKind::Canceled, reason, (Price(0), Qty(0)));
    }

    /// Liquidity an order could take at once within its limit, honouring self-trade
    /// prevention, capped at `needed`.
    fn fillable(&self, t: &Live, needed: Qty) -> Qty {
        let mut sum = 0i64;
        for maker in self.market.book.orders(t.side.opposite()) {
            let marketable = match t.side {
                Side::Buy => maker.price <= t.price,
                Side::Sell => maker.price >= t.price,
            };
            if !marketable || sum >= needed.0 {
                break;
            }
            if maker.account == t.account {
                match t.stp {
                    StpMode::None => {}
                    StpMode::CancelResting => continue,
                    StpMode::CancelIncoming | StpMode::CancelBoth => break,
                }
            }
            sum += maker.leaves.0;
        }
        Qty(sum.min(needed.0))
    }

    /// Publishes the coalesced level changes and, if it moved, the new top of book.
    fn flush(&mut self) {
        for i in 0..self.touched.len() {
            let (side, price, qty) = self.touched[i];
            self.market.book_seq = self.market.book_seq.next();
            let delta = BookDelta {
                instrument: self.market.instrument.id,
                seq: self.market.book_seq,
                ts: self.ts,
                side,
                price,
                qty,
            };
            self.emit(Event::BookDelta(delta));
        }
        self.touched.clear();
        let top = self.market.top();
        if top != self.market.top {
            self.market.top = top;
            self.market.bbo_seq = self.market.bbo_seq.next();
            let bbo = Bbo {
                instrument: self.market.instrument.id,
                seq: self.market.bbo_seq,
                ts: self.ts,
                bid_price: top.0,
                bid_qty: top.1,
                ask_price: top.2,
                ask_qty: top.3,
            };
            self.emit(Event::Bbo(bbo));
        }
    }
}

/// Checks a price against the instrument's grid and band.
fn check_price(instrument: &Instrument, price: Price) -> Result<(), RejectReason> {
    let spec = &instrument.spec;
    // Integer division is the slowest instruction here; most grids are the unit grid.
    if spec.tick_size.0 != 1 && price.0 % spec.tick_size.0 != 0 {
        return Err(RejectReason::InvalidPrice);
    }
    if price < spec.price_min || price > spec.price_max {
        return Err(RejectReason::PriceOutOfBand);
    }
    Ok(())
}

/// Checks a quantity against the instrument's lot grid and maximum.
fn check_qty(instrument: &Instrument, qty: Qty) -> Result<(), RejectReason> {
    let spec = &instrument.spec;
    if qty.0 <= 0 {
        return Err(RejectReason::NonPositiveQty);
    }
    if (spec.lot_size.0 != 1 && qty.0 % spec.lot_size.0 != 0) || qty > spec.qty_max {
        return Err(RejectReason::InvalidQty);
    }
    Ok(())
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

    /// Appends the whole state (see [`crate::snapshot`] for the file around it): table
    /// sizes, counters, the ledger, and per owned market its channel sequences, last top
    /// of book and resting orders in priority order.
    pub fn encode_state(&self, out: &mut Vec<u8>) {
        let put = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        out.extend_from_slice(&(self.assets.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.instruments.len() as u32).to_le_bytes());
        let c = &self.counters;
        for v in [c.commands, c.rejects, c.trades, c.events, self.max_order_id] {
            put(out, v);
        }
        self.ledger.encode_into(out);
        let owned: Vec<&Market> = self.markets.iter().flatten().collect();
        out.extend_from_slice(&(owned.len() as u32).to_le_bytes());
        for m in owned {
            out.extend_from_slice(&m.instrument.id.0.to_le_bytes());
            for v in [m.trades_seq.0, m.book_seq.0, m.bbo_seq.0] {
                put(out, v);
            }
            let (bp, bq, ap, aq) = m.top;
            for v in [bp.0, bq.0, ap.0, aq.0] {
                put(out, v as u64);
            }
            out.push(u8::from(m.halted));
            out.extend_from_slice(&(m.book.order_count() as u32).to_le_bytes());
            for side in [Side::Buy, Side::Sell] {
                for o in m.book.orders(side) {
                    put(out, o.id.0);
                    put(out, o.client_order_id);
                    out.extend_from_slice(&o.account.0.to_le_bytes());
                    for v in [o.price.0, o.leaves.0, o.filled.0] {
                        put(out, v as u64);
                    }
                    out.extend_from_slice(&[o.side.as_u8(), o.order_type.as_u8(), o.stp.as_u8()]);
                }
            }
        }
        self.keys.encode_into(out);
    }

    /// An engine built from `spec` (owning what `owns` says) with the state that
    /// [`Engine::encode_state`] wrote. The tables must match `spec` exactly and every order
    /// must be valid for its book; otherwise the state is refused.
    /// `with_keys`: the state ends with the idempotency keys (snapshot version 3 on).
    pub fn restore_state(
        spec: &EngineSpec,
        owns: impl Fn(InstrumentId) -> bool,
        bytes: &[u8],
        with_keys: bool,
    ) -> Result<Engine, StateError> {
        let mut e = Engine::new(spec, owns)
            .map_err(|err| StateError { at: 0, what: format!("engine spec: {err}") })?;
        let mut r = ByteReader::new(bytes);
        let (assets, instruments) = (r.u32()? as usize, r.u32()? as usize);
        if assets != e.assets.len() || instruments != e.instruments.len() {
            return Err(StateError::at(
                &r,
                format!(
                    "tables differ: snapshot has {assets} assets and {instruments} instruments, \
                 this configuration {} and {}",
                    e.assets.len(),
                    e.instruments.len()
                ),
            ));
        }
        e.counters = EngineCounters {
            commands: r.u64()?,
            rejects: r.u64()?,
            trades: r.u64()?,
            events: r.u64()?,
        };
        e.max_order_id = r.u64()?;
        e.ledger.decode_from(&mut r)?;
        let owned = r.u32()? as usize;
        if owned != e.markets.iter().flatten().count() {
            return Err(StateError::at(
                &r,
                format!("snapshot holds {owned} markets, this shard owns others"),
            ));
        }
        for _ in 0..owned {
            let id = r.u32()?;
            let Some(Some(m)) = e.markets.get_mut(id as usize) else {
                return Err(StateError::at(
                    &r,
                    format!("instrument {id} is not owned by this shard"),
                ));
            };
            m.trades_seq = Seq(r.u64()?);
            m.book_seq = Seq(r.u64()?);
            m.bbo_seq = Seq(r.u64()?);
            m.top = (Price(r.i64()?), Qty(r.i64()?), Price(r.i64()?), Qty(r.i64()?));
            m.halted = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(StateError::at(&r, "trading status")),
            };
            let count = r.u32()?;
            for _ in 0..count {
                let id = OrderId(r.u64()?);
                let client_order_id = r.u64()?;
                let account = AccountId(r.u32()?);
                let (price, leaves, filled) = (Price(r.i64()?), Qty(r.i64()?), Qty(r.i64()?));
                let side = Side::from_u8(r.u8()?).ok_or_else(|| StateError::at(&r, "side"))?;
                let order_type =
                    OrderType::from_u8(r.u8()?).ok_or_else(|| StateError::at(&r, "type"))?;
                let stp =
                    StpMode::from_u8(r.u8()?).ok_or_else(|| StateError::at(&r, "stp mode"))?;
                if leaves.0 <= 0 || filled.0 < 0 || m.book.contains(id) || price.0 <= 0 {
                    return Err(StateError::at(
                        &r,
                        format!("order {} is not a valid resting order", id.0),
                    ));
                }
                let order = RestingOrder {
                    id,
                    client_order_id,
                    account,
                    price,
                    leaves,
                    filled,
                    side,
                    order_type,
                    stp,
                };
                m.book.insert(order).map_err(|_| StateError::at(&r, "book capacity exceeded"))?;
            }
        }
        if with_keys {
            e.keys = KeyTable::decode_from(&mut r)?;
        }
        if !r.finished() {
            return Err(StateError::at(&r, "bytes after the last market"));
        }
        Ok(e)
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

    /// Last sequences of the (trades, book, bbo) channels of an owned instrument.
    pub fn channel_seqs(&self, instrument: InstrumentId) -> Option<(Seq, Seq, Seq)> {
        let m = self.markets.get(instrument.0 as usize)?.as_ref()?;
        Some((m.trades_seq, m.book_seq, m.bbo_seq))
    }

    /// Applies one command, pushing every event it causes into `out`.
    pub fn process<S: EventSink>(&mut self, cmd: &Command, out: &mut S) {
        self.counters.commands += 1;
        match &cmd.kind {
            CommandKind::New(o) => {
                self.max_order_id = self.max_order_id.max(o.order_id.0);
                self.new_order(cmd.ts, o, out)
            }
            CommandKind::Cancel(c) => self.cancel(cmd.ts, c, out),
            CommandKind::Replace(r) => self.replace(cmd.ts, r, out),
            CommandKind::Transfer(t) => self.transfer(cmd.ts, t, out),
            CommandKind::Status(s) => {
                // No event: the state is asked for (`is_halted`) and shown by the gateway.
                if let Some(Some(m)) = self.markets.get_mut(s.instrument.0 as usize) {
                    m.halted = s.halted;
                }
            }
        }
    }

    /// Refuses a command before it reaches a market (`kind` says which command).
    fn reject<S: EventSink>(
        &mut self,
        ts: UnixNanos,
        o: &Live,
        kind: ExecKind,
        reason: RejectReason,
        out: &mut S,
    ) {
        debug_assert!(kind.is_rejection());
        self.counters.rejects += 1;
        self.counters.events += 1;
        out.push(report(&mut self.ledger, o, ts, kind, reason, (Price(0), Qty(0))));
    }

    /// The verdict on a keyed order's key: `Err` when the key was used already (a retry,
    /// or a reuse for another order); else the key is remembered for this order, whatever
    /// becomes of it, so that a retry gets this order's outcome and never a second order.
    fn claim_key(&mut self, ts: UnixNanos, o: &NewOrder) -> Result<(), RejectReason> {
        let Some(key) = o.key else { return Ok(()) };
        let fingerprint = fingerprint(o);
        match self.keys.find(o.account, key, ts) {
            Some(r) if r.fingerprint == fingerprint => Err(RejectReason::DuplicateRequest),
            Some(_) => Err(RejectReason::IdempotencyKeyReused),
            // Keys of accounts that do not exist would only take memory.
            None if !self.ledger.contains(o.account) => Ok(()),
            None => {
                let record = KeyRecord { key, order_id: o.order_id, fingerprint, ts };
                self.keys.insert(o.account, record);
                Ok(())
            }
        }
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

    /// Splits out the matching context for an owned market.
    fn ctx<'a, S: EventSink>(
        &'a mut self,
        instrument: InstrumentId,
        ts: UnixNanos,
        out: &'a mut S,
    ) -> Option<Ctx<'a, S>> {
        let market = self.markets.get_mut(instrument.0 as usize)?.as_mut()?;
        Some(Ctx {
            market,
            ledger: &mut self.ledger,
            touched: &mut self.touched,
            counters: &mut self.counters,
            out,
            ts,
        })
    }

    fn new_order<S: EventSink>(&mut self, ts: UnixNanos, o: &NewOrder, out: &mut S) {
        let mut live = Live::from_new(o);
        if let Err(reason) = self.claim_key(ts, o).and_then(|()| self.validate_new(o)) {
            return self.reject(ts, &live, ExecKind::Rejected, reason, out);
        }
        let mut cx = self.ctx(o.instrument, ts, out).expect("validated: owned market");
        let book = &cx.market.book;
        if o.order_type == OrderType::PostOnly {
            let crosses = match o.side {
                Side::Buy => book.best(Side::Sell).is_some_and(|(p, _)| p <= o.price),
                Side::Sell => book.best(Side::Buy).is_some_and(|(p, _)| p >= o.price),
            };
            if crosses {
                return cx.report(
                    &live,
                    ExecKind::Rejected,
                    RejectReason::WouldCross,
                    (Price(0), Qty(0)),
                );
            }
        }
        if o.order_type == OrderType::Fok && cx.fillable(&live, o.qty) < o.qty {
            return cx.report(
                &live,
                ExecKind::Rejected,
                RejectReason::FokUnfillable,
                (Price(0), Qty(0)),
            );
        }
        let spec = &cx.market.instrument.spec;
        let funded = if o.order_type == OrderType::Market && o.side == Side::Buy {
            // Funded fill by fill; refuse outright only an account with nothing to spend.
            cx.ledger.balance(o.account, spec.quote).available().0 > 0
        } else {
            let (asset, amount) = cx.hold_of(&live);
            cx.ledger.hold(o.account, asset, amount).is_ok()
        };
        if !funded {
            return cx.report(
                &live,
                ExecKind::Rejected,
                RejectReason::InsufficientFunds,
                (Price(0), Qty(0)),
            );
        }
        cx.report(&live, ExecKind::Accepted, RejectReason::None, (Price(0), Qty(0)));
        cx.execute(&mut live);
        cx.flush();
    }

    fn validate_new(&self, o: &NewOrder) -> Result<(), RejectReason> {
        let market = self
            .markets
            .get(o.instrument.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(RejectReason::UnknownInstrument)?;
        if !self.ledger.contains(o.account) {
            return Err(RejectReason::UnknownAccount);
        }
        if market.halted {
            return Err(RejectReason::InstrumentHalted);
        }
        check_qty(&market.instrument, o.qty)?;
        if o.order_type != OrderType::Market {
            check_price(&market.instrument, o.price)?;
        }
        if market.book.contains(o.order_id) {
            return Err(RejectReason::DuplicateOrderId);
        }
        if matches!(o.order_type, OrderType::Limit | OrderType::PostOnly)
            && !market.book.has_capacity()
        {
            return Err(RejectReason::BookFull);
        }
        Ok(())
    }

    /// Finds `order_id` owned by `account` in an owned market.
    fn find_owned(
        &self,
        instrument: InstrumentId,
        account: AccountId,
        order_id: OrderId,
    ) -> Result<(u32, RestingOrder), RejectReason> {
        let market = self
            .markets
            .get(instrument.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(RejectReason::UnknownInstrument)?;
        let slot = market.book.find(order_id).ok_or(RejectReason::UnknownOrder)?;
        let order = *market.book.order(slot);
        // Someone else's order is reported exactly like a missing one: nothing leaks.
        if order.account != account {
            return Err(RejectReason::UnknownOrder);
        }
        Ok((slot, order))
    }

    fn unknown(order_id: OrderId, account: AccountId, instrument: InstrumentId) -> Live {
        Live {
            id: order_id,
            client_order_id: 0,
            account,
            instrument,
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Price(0),
            leaves: Qty(0),
            filled: Qty(0),
            stp: StpMode::None,
        }
    }

    fn cancel<S: EventSink>(&mut self, ts: UnixNanos, c: &CancelOrder, out: &mut S) {
        let slot = match self.find_owned(c.instrument, c.account, c.order_id) {
            Ok((slot, _)) => slot,
            Err(reason) => {
                let live = Self::unknown(c.order_id, c.account, c.instrument);
                return self.reject(ts, &live, ExecKind::CancelRejected, reason, out);
            }
        };
        let mut cx = self.ctx(c.instrument, ts, out).expect("found: owned market");
        cx.cancel_resting(slot, RejectReason::UserCanceled);
        cx.flush();
    }

    fn replace<S: EventSink>(&mut self, ts: UnixNanos, r: &ReplaceOrder, out: &mut S) {
        let halted = self
            .markets
            .get(r.instrument.0 as usize)
            .and_then(Option::as_ref)
            .is_some_and(|m| m.halted);
        let (slot, order) = match self.find_owned(r.instrument, r.account, r.order_id) {
            // The order stays as it is, and the report says what it still has open.
            Ok((_, order)) if halted => {
                let live = Live::from_resting(&order, r.instrument);
                let reason = RejectReason::InstrumentHalted;
                return self.reject(ts, &live, ExecKind::ReplaceRejected, reason, out);
            }
            Ok(found) => found,
            Err(reason) => {
                let live = Self::unknown(r.order_id, r.account, r.instrument);
                return self.reject(ts, &live, ExecKind::ReplaceRejected, reason, out);
            }
        };
        let old = Live::from_resting(&order, r.instrument);
        let mut new = Live { price: r.price, leaves: r.qty, ..old };
        let mut cx = self.ctx(r.instrument, ts, out).expect("found: owned market");
        let instrument = &cx.market.instrument;
        let checked = check_qty(instrument, r.qty).and_then(|()| check_price(instrument, r.price));
        let reason = match checked {
            Err(reason) => reason,
            Ok(()) if r.price == order.price && r.qty == order.leaves => RejectReason::NoChange,
            Ok(()) if r.price == order.price && r.qty < order.leaves => {
                // Lower quantity at the same price: keep time priority.
                let (asset, old_hold) = cx.hold_of(&old);
                let (_, new_hold) = cx.hold_of(&new);
                cx.ledger.release(order.account, asset, Amount(old_hold.0 - new_hold.0));
                let level_qty = cx.market.book.reduce(slot, r.qty);
                cx.touch(order.side, order.price, level_qty);
                cx.report(&new, ExecKind::Replaced, RejectReason::None, (Price(0), Qty(0)));
                return cx.flush();
            }
            Ok(()) => {
                let book = &cx.market.book;
                let crosses = match order.side {
                    Side::Buy => book.best(Side::Sell).is_some_and(|(p, _)| p <= r.price),
                    Side::Sell => book.best(Side::Buy).is_some_and(|(p, _)| p >= r.price),
                };
                let (asset, old_hold) = cx.hold_of(&old);
                let (_, new_hold) = cx.hold_of(&new);
                let available = cx.ledger.balance(order.account, asset).available();
                if order.order_type == OrderType::PostOnly && crosses {
                    RejectReason::WouldCross
                } else if available.0 + old_hold.0 < new_hold.0 {
                    RejectReason::InsufficientFunds
                } else {
                    // Price change or larger quantity: loses priority, may trade.
                    let (_, level_qty) = cx.market.book.remove(slot);
                    cx.touch(order.side, order.price, level_qty);
                    cx.ledger.release(order.account, asset, old_hold);
                    cx.ledger.hold(order.account, asset, new_hold).expect("checked available");
                    cx.report(&new, ExecKind::Replaced, RejectReason::None, (Price(0), Qty(0)));
                    cx.execute(&mut new);
                    return cx.flush();
                }
            }
        };
        cx.report(&old, ExecKind::ReplaceRejected, reason, (Price(0), Qty(0)));
    }

    fn transfer<S: EventSink>(&mut self, ts: UnixNanos, t: &Transfer, out: &mut S) {
        let live = Live {
            id: OrderId(0),
            client_order_id: t.request_id,
            account: t.account,
            instrument: InstrumentId(0),
            side: if t.amount.0 >= 0 { Side::Buy } else { Side::Sell },
            order_type: OrderType::Limit,
            price: Price(i64::from(t.asset.0)),
            leaves: Qty(0),
            filled: Qty(0),
            stp: StpMode::None,
        };
        let result = if !self.ledger.contains(t.account) {
            Err(RejectReason::UnknownAccount)
        } else if usize::from(t.asset.0) >= self.assets.len() {
            Err(RejectReason::UnknownAsset)
        } else {
            self.ledger
                .transfer(t.account, t.asset, t.amount)
                .map_err(|_| RejectReason::InsufficientFunds)
        };
        match result {
            Err(reason) => self.reject(ts, &live, ExecKind::Rejected, reason, out),
            Ok(()) => {
                self.counters.events += 1;
                let last = (Price(0), Qty(t.amount.0));
                out.push(report(
                    &mut self.ledger,
                    &live,
                    ts,
                    ExecKind::Transferred,
                    RejectReason::None,
                    last,
                ));
            }
        }
    }

    /// Digest of the whole state: balances, holds, positions, report sequences, channel
    /// sequences and every resting order in priority order. Equal digests mean equal state.
    pub fn state_digest(&self) -> u64 {
        let mut hash = Fnv64::OFFSET_BASIS;
        self.ledger.digest_into(&mut hash);
        let mut fnv = Fnv64::resume(hash);
        let mut fold = |v: u64| fnv.write_u64(v);
        for m in self.markets.iter().flatten() {
            fold(u64::from(m.instrument.id.0));
            fold(m.trades_seq.0);
            fold(m.book_seq.0);
            fold(m.bbo_seq.0);
            fold(u64::from(m.halted));
            for side in [Side::Buy, Side::Sell] {
                for o in m.book.orders(side) {
                    fold(o.id.0);
                    fold(u64::from(o.account.0));
                    fold(o.price.0 as u64);
                    fold(o.leaves.0 as u64);
                    fold(o.filled.0 as u64);
                }
            }
        }
        self.keys.digest_into(&mut fold);
        fnv.value()
    }

    /// Checks book and ledger invariants, and that holds equal what open orders need;
    /// for tests. Panics with a description on failure.
    pub fn check_invariants(&self) {
        self.ledger.check_invariants();
        let assets = self.assets.len();
        let accounts = self.ledger.accounts() as usize;
        let mut expected = vec![0i64; accounts * assets];
        for m in self.markets.iter().flatten() {
            m.book.check_invariants();
            for side in [Side::Buy, Side::Sell] {
                for o in m.book.orders(side) {
                    let (asset, amount) = match side {
                        Side::Buy => {
                            (m.instrument.spec.quote, m.instrument.notional(o.price, o.leaves))
                        }
                        Side::Sell => (m.instrument.spec.base, m.instrument.base_amount(o.leaves)),
                    };
                    let amount = amount.expect("validated amounts");
                    expected[o.account.0 as usize * assets + usize::from(asset.0)] += amount.0;
                }
            }
        }
        // Only meaningful when this engine owns every instrument (one shard).
        if self.markets.iter().all(Option::is_some) {
            for a in 0..accounts {
                for s in 0..assets {
                    let held = self.ledger.balance(AccountId(a as u32), AssetId(s as u16)).held;
                    assert_eq!(held.0, expected[a * assets + s], "hold of account {a} asset {s}");
                }
            }
        }
    }
}
