//! Command dispatch: [`Engine::process`] and, per command, its validation and effects.
//! Everything that happens inside a book goes through [`super::matching`].

use super::matching::{check_price, check_qty, report, Live};
use super::{Engine, EventSink};
use crate::book::RestingOrder;
use crate::command::{
    CancelOrder, Command, CommandKind, NewOrder, OrderType, RejectReason, ReplaceOrder, ReplaceQty,
    StpMode, Transfer,
};
use crate::event::{Event, ExecKind, TransferReport};
use crate::idempotency::{fingerprint, KeyRecord};
use crate::types::{AccountId, Amount, InstrumentId, OrderId, Price, Qty, Side, UnixNanos};

impl Engine {
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
        out.push(report(&mut self.ledger, o, ts, kind, Some(reason), (Price(0), Qty(0))));
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
                    Some(RejectReason::WouldCross),
                    (Price(0), Qty(0)),
                );
            }
        }
        if o.order_type == OrderType::Fok && cx.fillable(&live, o.qty) < o.qty {
            return cx.report(
                &live,
                ExecKind::Rejected,
                Some(RejectReason::FokUnfillable),
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
                Some(RejectReason::InsufficientFunds),
                (Price(0), Qty(0)),
            );
        }
        cx.report(&live, ExecKind::Accepted, None, (Price(0), Qty(0)));
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
        // What remains open after the replace (at most zero: a total at or below what has
        // filled, which ends the order).
        let leaves = match r.qty {
            ReplaceQty::Open(q) => q,
            ReplaceQty::Total(q) => Qty(q.0.saturating_sub(order.filled.0)),
        };
        let mut new = Live { price: r.price, leaves, ..old };
        let mut cx = self.ctx(r.instrument, ts, out).expect("found: owned market");
        let instrument = &cx.market.instrument;
        let checked =
            check_qty(instrument, r.qty.given()).and_then(|()| check_price(instrument, r.price));
        let reason = match checked {
            Err(reason) => reason,
            Ok(()) if leaves.0 <= 0 => {
                // The new total has filled already: the replace is taken (nothing stays
                // open), then the order ends as a cancel at its owner's request ends it.
                let none_open = Live { leaves: Qty(0), ..old };
                cx.report(&none_open, ExecKind::Replaced, None, (Price(0), Qty(0)));
                cx.cancel_resting(slot, RejectReason::UserCanceled);
                return cx.flush();
            }
            Ok(()) if r.price == order.price && leaves == order.leaves => RejectReason::NoChange,
            Ok(()) if r.price == order.price && leaves < order.leaves => {
                // Lower quantity at the same price: keep time priority.
                let (asset, old_hold) = cx.hold_of(&old);
                let (_, new_hold) = cx.hold_of(&new);
                cx.ledger.release(order.account, asset, Amount(old_hold.0 - new_hold.0));
                let level_qty = cx.market.book.reduce(slot, leaves);
                cx.touch(order.side, order.price, level_qty);
                cx.report(&new, ExecKind::Replaced, None, (Price(0), Qty(0)));
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
                    cx.report(&new, ExecKind::Replaced, None, (Price(0), Qty(0)));
                    cx.execute(&mut new);
                    return cx.flush();
                }
            }
        };
        cx.report(&old, ExecKind::ReplaceRejected, Some(reason), (Price(0), Qty(0)));
    }

    fn transfer<S: EventSink>(&mut self, ts: UnixNanos, t: &Transfer, out: &mut S) {
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
            Err(reason) => {
                // A refused transfer is still an execution report of kind `Rejected`, with
                // the asset id as its price and the request id as its client order id: the
                // wire shows it that way, and nothing tells it from an order's otherwise.
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
                self.reject(ts, &live, ExecKind::Rejected, reason, out);
            }
            Ok(()) => {
                self.counters.events += 1;
                // The account's next report sequence, shared with its executions.
                let seq = self.ledger.next_exec_seq(t.account);
                out.push(Event::Transfer(TransferReport {
                    account: t.account,
                    seq,
                    ts,
                    asset: t.asset,
                    amount: t.amount,
                    request_id: t.request_id,
                }));
            }
        }
    }
}
