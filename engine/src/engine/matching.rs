//! Matching: an accepted order against the other side of its book, price then time
//! priority, with self-trade prevention; settlement of every fill in the ledger; and the
//! coalesced level changes and top of book a command publishes when it is done.
//!
//! The book ([`crate::book`]) is the data structure; this is the policy over it.
//!
//! Contracts checked at run time (TIGER_STYLE: a broken one stops the engine rather than
//! letting it publish a wrong state). `assert!` where the check is a few compares on
//! values the step has just computed or touched, so it stays on in release builds; the
//! mixed-flow bench shows what it costs (figures in the commit that added them).
//! `debug_assert!` where a check would cost a walk or re-derive what the code just did.
//! - a fill is of a positive quantity, within the maker's and the taker's open quantity;
//! - settlement leaves every debited balance with `0 <= held <= total` (credits and
//!   releases cannot break it; holds are checked by the ledger when they are taken);
//! - the book is not crossed when a command that changed it is done (best bid < best ask
//!   when both exist; checked on the top of book computed for the `Bbo` anyway).

use super::{Engine, EngineCounters, EventSink, Market};
use crate::accounts::Ledger;
use crate::book::RestingOrder;
use crate::command::{NewOrder, OrderType, RejectReason, StpMode};
use crate::event::{Bbo, BookDelta, Event, ExecKind, ExecReport, Trade};
use crate::instrument::Instrument;
use crate::types::{
    AccountId, Amount, AssetId, InstrumentId, OrderId, Price, Qty, Seq, Side, UnixNanos,
};

/// An order while it is being processed (an incoming order or a re-priced one).
#[derive(Clone, Copy, Debug)]
pub(super) struct Live {
    pub(super) id: OrderId,
    pub(super) client_order_id: u64,
    pub(super) account: AccountId,
    pub(super) instrument: InstrumentId,
    pub(super) side: Side,
    pub(super) order_type: OrderType,
    pub(super) price: Price,
    pub(super) leaves: Qty,
    pub(super) filled: Qty,
    pub(super) stp: StpMode,
}

impl Live {
    pub(super) fn from_new(o: &NewOrder) -> Self {
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

    pub(super) fn from_resting(o: &RestingOrder, instrument: InstrumentId) -> Self {
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
pub(super) struct Ctx<'a, S: EventSink> {
    pub(super) market: &'a mut Market,
    pub(super) ledger: &'a mut Ledger,
    touched: &'a mut Vec<(Side, Price, Qty)>,
    counters: &'a mut EngineCounters,
    out: &'a mut S,
    ts: UnixNanos,
}

impl Engine {
    /// Splits out the matching context for an owned market.
    pub(super) fn ctx<'a, S: EventSink>(
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
}

/// The execution report of `o`, numbered on its account's private channel.
pub(super) fn report(
    ledger: &mut Ledger,
    o: &Live,
    ts: UnixNanos,
    kind: ExecKind,
    reason: Option<RejectReason>,
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
    pub(super) fn report(
        &mut self,
        o: &Live,
        kind: ExecKind,
        reason: Option<RejectReason>,
        last: (Price, Qty),
    ) {
        // The one place a rejection is counted (with `Engine::reject`).
        if kind.is_rejection() {
            self.counters.rejects += 1;
        }
        let event = report(self.ledger, o, self.ts, kind, reason, last);
        self.emit(event);
    }

    #[inline]
    pub(super) fn touch(&mut self, side: Side, price: Price, qty: Qty) {
        match self.touched.iter_mut().rev().find(|e| e.0 == side && e.1 == price) {
            Some(entry) => entry.2 = qty,
            None => self.touched.push((side, price, qty)),
        }
    }

    /// What an open order of `o.leaves` keeps on hold: quote at the limit for buys (none
    /// for market buys, which are funded fill by fill), base for sells.
    pub(super) fn hold_of(&self, o: &Live) -> (AssetId, Amount) {
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
    pub(super) fn cancel_resting(&mut self, slot: u32, reason: RejectReason) {
        let (order, level_qty) = self.market.book.remove(slot);
        let live = Live::from_resting(&order, self.market.instrument.id);
        let (asset, amount) = self.hold_of(&live);
        self.ledger.release(order.account, asset, amount);
        self.touch(order.side, order.price, level_qty);
        self.report(&live, ExecKind::Canceled, Some(reason), (Price(0), Qty(0)));
    }

    /// Matches `t` against the other side until it is filled, no longer marketable, or
    /// stopped. Returns why it stopped with quantity left (`None`: filled completely).
    fn match_incoming(&mut self, t: &mut Live) -> Option<RejectReason> {
        let opposite = t.side.opposite();
        while t.leaves.0 > 0 {
            let Some(slot) = self.market.book.front(opposite) else {
                return Some(RejectReason::NoLiquidity);
            };
            let maker = *self.market.book.order(slot);
            if !marketable(t, maker.price) {
                return Some(RejectReason::NoLiquidity);
            }
            if maker.account == t.account && t.stp != StpMode::None {
                match self.prevent_self_trade(t.stp, slot) {
                    Some(stop) => return Some(stop),
                    None => continue,
                }
            }
            let Some(qty) = self.fill_qty(t, &maker) else {
                return Some(RejectReason::InsufficientFunds);
            };
            self.settle(t, &maker, qty);
            self.fill(t, slot, &maker, qty);
        }
        None
    }

    /// Self-trade prevention, when the best maker is `t`'s own order: `Some(reason)` stops
    /// matching, `None` goes on with the next maker (the own order was canceled).
    fn prevent_self_trade(&mut self, stp: StpMode, slot: u32) -> Option<RejectReason> {
        match stp {
            StpMode::CancelIncoming => Some(RejectReason::SelfTrade),
            StpMode::CancelBoth => {
                self.cancel_resting(slot, RejectReason::SelfTrade);
                Some(RejectReason::SelfTrade)
            }
            _ => {
                self.cancel_resting(slot, RejectReason::SelfTrade);
                None
            }
        }
    }

    /// How much `t` takes from `maker`: all it can, except that a market buy (funded fill
    /// by fill) takes what its available quote pays for. `None`: not even one unit.
    fn fill_qty(&self, t: &Live, maker: &RestingOrder) -> Option<Qty> {
        let qty = Qty(t.leaves.0.min(maker.leaves.0));
        if !(t.order_type == OrderType::Market && t.side == Side::Buy) {
            return Some(qty);
        }
        let quote = self.market.instrument.spec.quote;
        let available = self.ledger.balance(t.account, quote).available();
        let affordable = self.market.instrument.affordable_qty(maker.price, available);
        let qty = Qty(qty.0.min(affordable.0));
        (qty.0 > 0).then_some(qty)
    }

    /// Settles a fill of `qty` between `t` and `maker` at the maker's price: releases the
    /// holds the fill used, moves quote and base, and updates both positions.
    fn settle(&mut self, t: &Live, maker: &RestingOrder, qty: Qty) {
        // Prices and quantities are within the instrument's validated band, so these
        // amounts cannot overflow.
        let instrument = &self.market.instrument;
        let (base, quote) = (instrument.spec.base, instrument.spec.quote);
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
        // Postcondition (release): the two debited balances, just written, still cover
        // their holds.
        assert!(
            self.ledger.holds_within_total(buyer, quote)
                && self.ledger.holds_within_total(seller, base),
            "settlement left a hold above its balance"
        );
    }

    /// Takes `qty` off the maker at `slot` and off `t`, and publishes the trade and both
    /// sides' execution reports.
    fn fill(&mut self, t: &mut Live, slot: u32, maker: &RestingOrder, qty: Qty) {
        // Preconditions (release): three compares on values in registers.
        assert!(qty.0 > 0, "fill of nothing");
        assert!(qty.0 <= maker.leaves.0 && qty.0 <= t.leaves.0, "fill beyond open quantity");
        let (maker_after, level_qty) = self.market.book.fill(slot, qty);
        self.touch(t.side.opposite(), maker.price, level_qty);
        t.leaves.0 -= qty.0;
        t.filled.0 += qty.0;
        debug_assert_eq!(maker_after.leaves.0, maker.leaves.0 - qty.0, "the book took the fill");
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
        let last = (maker.price, qty);
        self.report(&maker_live, fill_kind(maker_after.leaves), None, last);
        let taker = *t;
        self.report(&taker, fill_kind(t.leaves), None, last);
    }

    /// Matches an accepted (funded, held) order, then rests or cancels what is left.
    pub(super) fn execute(&mut self, t: &mut Live) {
        let Some(stop) = self.match_incoming(t) else {
            debug_assert_eq!(t.leaves.0, 0, "matching stops with quantity left only for a reason");
            return;
        };
        debug_assert!(t.leaves.0 > 0, "a filled order has nothing left to stop");
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
        self.report(t, ExecKind::Canceled, Some(reason), (Price(0), Qty(0)));
    }

    /// Liquidity an order could take at once within its limit, honouring self-trade
    /// prevention, capped at `needed`.
    pub(super) fn fillable(&self, t: &Live, needed: Qty) -> Qty {
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
    pub(super) fn flush(&mut self) {
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
        // Postcondition (release): O(1) on the top this step computes anyway.
        let (bid, bid_qty, ask, ask_qty) = top;
        assert!(bid_qty.0 == 0 || ask_qty.0 == 0 || bid < ask, "book crossed: {top:?}");
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

/// Whether a maker at `price` is within `t`'s limit (any price, for a market order).
#[inline]
fn marketable(t: &Live, price: Price) -> bool {
    t.order_type == OrderType::Market
        || match t.side {
            Side::Buy => price <= t.price,
            Side::Sell => price >= t.price,
        }
}

/// The report kind of a fill that leaves `leaves` open.
#[inline]
fn fill_kind(leaves: Qty) -> ExecKind {
    if leaves.0 == 0 {
        ExecKind::Filled
    } else {
        ExecKind::PartiallyFilled
    }
}

/// Checks a price against the instrument's grid and band.
pub(super) fn check_price(instrument: &Instrument, price: Price) -> Result<(), RejectReason> {
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
pub(super) fn check_qty(instrument: &Instrument, qty: Qty) -> Result<(), RejectReason> {
    let spec = &instrument.spec;
    if qty.0 <= 0 {
        return Err(RejectReason::NonPositiveQty);
    }
    if (spec.lot_size.0 != 1 && qty.0 % spec.lot_size.0 != 0) || qty > spec.qty_max {
        return Err(RejectReason::InvalidQty);
    }
    Ok(())
}
