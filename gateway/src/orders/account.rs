//! One account's orders and fills, and how an execution report changes them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::*;

#[derive(Default)]
pub(super) struct AccountState {
    /// Change only through [`AccountState::put`] and `forget_oldest_closed`, which keep
    /// `by_time` and `closed` in step.
    pub(super) orders: BTreeMap<OrderId, OrderView>,
    /// Every order in `orders` by when it was placed (`created_ts`, then id): the order
    /// they are listed in.
    pub(super) by_time: BTreeSet<(u64, OrderId)>,
    /// The closed orders in `orders`, by when they were placed: the oldest is the first to
    /// forget, found without walking past the open ones (a market maker may keep
    /// thousands open).
    closed: BTreeSet<(u64, OrderId)>,
    /// Oldest first: in engine time, then id (with one shard, that is id order; with
    /// several, ids grow per shard and only time orders them all).
    pub(super) fills: VecDeque<FillView>,
    /// The kept fills' ids, with their engine time (their place in `fills`).
    pub(super) fill_times: HashMap<u64, u64>,
}

impl AccountState {
    /// Records `view` as its order's state.
    pub(super) fn put(&mut self, view: OrderView) {
        if let Some(old) = self.orders.get(&view.id) {
            if old.created_ts != view.created_ts {
                let place = (old.created_ts, old.id);
                self.by_time.remove(&place);
                self.closed.remove(&place);
            }
        }
        let place = (view.created_ts, view.id);
        self.by_time.insert(place);
        if view.status == Status::Open {
            self.closed.remove(&place);
        } else {
            self.closed.insert(place);
        }
        self.orders.insert(view.id, view);
    }

    /// How many of its orders are open.
    pub(super) fn open_count(&self) -> usize {
        self.orders.len() - self.closed.len()
    }

    /// Forgets the oldest closed order, if any.
    fn forget_oldest_closed(&mut self) {
        if let Some(place) = self.closed.pop_first() {
            self.by_time.remove(&place);
            self.orders.remove(&place.1);
        }
    }
}

/// Applies `r` unless it is already reflected; whether it changed anything. Replays after
/// a restart repeat reports, and a hub that was lapped may have missed some that a replay
/// then brings: so an order takes a report only if it is newer than the last one it took
/// (never going back to an older state), and a fill is added only if it is not there.
pub(super) fn apply_to(state: &mut AccountState, r: &ExecReport, shards: usize) -> bool {
    let known = state.orders.get(&r.order_id).map(|o| o.seq);
    let is_fill = matches!(r.kind, ExecKind::PartiallyFilled | ExecKind::Filled);
    let new_fill = is_fill && !has_fill(state, fill_id(r, shards));
    let newer = known.is_none_or(|seq| r.seq.0 > seq);
    if matches!(r.kind, ExecKind::CancelRejected | ExecKind::ReplaceRejected)
        || matches!(
            r.reason,
            Some(RejectReason::DuplicateRequest | RejectReason::IdempotencyKeyReused)
        )
    {
        // A refused cancel or replace: the order itself is unchanged. A refused retry is
        // no order at all: the order its key belongs to is the one that counts.
        return false;
    }
    if newer {
        let fresh = view_of(r);
        let first = state.orders.get(&r.order_id).copied().unwrap_or(fresh);
        // What the order is stays as first seen; where it stands follows the report.
        state.put(OrderView {
            id: first.id,
            client_order_id: first.client_order_id,
            instrument: first.instrument,
            side: first.side,
            order_type: first.order_type,
            created_ts: first.created_ts,
            ..fresh
        });
    }
    if new_fill {
        push_fill(state, fill_of(r, shards));
    }
    if newer {
        forget_oldest_closed(state);
    }
    newer || new_fill
}

/// Whether a fill with this id is kept.
pub(super) fn has_fill(state: &AccountState, id: u64) -> bool {
    state.fill_times.contains_key(&id)
}

pub(super) fn status_of(kind: ExecKind) -> Status {
    match kind {
        ExecKind::Rejected => Status::Rejected,
        ExecKind::Canceled => Status::Canceled,
        ExecKind::Filled => Status::Filled,
        _ => Status::Open,
    }
}

/// Adds a fill in time order (one a replay brings late goes where it belongs), unless it
/// is kept already, keeping the newest [`FILLS_KEPT`].
pub(super) fn push_fill(state: &mut AccountState, fill: FillView) {
    if state.fill_times.insert(fill.id, fill.ts).is_some() {
        return;
    }
    let place = |f: &FillView| (f.ts, f.id);
    match state.fills.back() {
        Some(last) if place(last) > place(&fill) => {
            let at = state.fills.partition_point(|f| place(f) < place(&fill));
            state.fills.insert(at, fill);
        }
        _ => state.fills.push_back(fill),
    }
    if state.fills.len() > FILLS_KEPT {
        if let Some(oldest) = state.fills.pop_front() {
            state.fill_times.remove(&oldest.id);
        }
    }
}

pub(super) fn forget_oldest_closed(state: &mut AccountState) {
    if state.orders.len() > ORDERS_KEPT {
        // Forget the oldest closed order (open ones are always kept).
        state.forget_oldest_closed();
    }
}

/// A report with only the fields a history record uses set.
pub(super) fn bare_report(account: AccountId, instrument: InstrumentId, seq: u64) -> ExecReport {
    ExecReport {
        account,
        seq: tickgate_engine::Seq(seq),
        ts: tickgate_engine::UnixNanos(0),
        kind: ExecKind::Accepted,
        reason: None,
        instrument,
        order_id: OrderId(0),
        client_order_id: 0,
        side: Side::Buy,
        order_type: OrderType::Limit,
        price: Price(0),
        last_price: Price(0),
        last_qty: Qty(0),
        leaves_qty: Qty(0),
        cum_qty: Qty(0),
    }
}

/// The history records that rebuild one account's state.
pub(super) fn dump_account(account: AccountId, state: &AccountState, out: &mut Vec<Entry>) {
    for o in state.orders.values() {
        out.push(Entry::Order(ExecReport {
            ts: tickgate_engine::UnixNanos(o.updated_ts),
            kind: match o.status {
                Status::Open => ExecKind::Accepted,
                Status::Filled => ExecKind::Filled,
                Status::Canceled => ExecKind::Canceled,
                Status::Rejected => ExecKind::Rejected,
            },
            reason: o.reason,
            order_id: o.id,
            // When it was placed, in a field an order record does not otherwise use.
            last_qty: Qty(o.created_ts as i64),
            ..o.onto(bare_report(account, o.instrument, o.seq))
        }));
    }
    for f in &state.fills {
        out.push(Entry::Fill(ExecReport {
            ts: tickgate_engine::UnixNanos(f.ts),
            kind: ExecKind::PartiallyFilled,
            order_id: f.order_id,
            side: f.side,
            last_price: f.price,
            last_qty: f.qty,
            ..bare_report(account, f.instrument, f.seq)
        }));
    }
}

/// Applies one history record to `state`.
pub(super) fn load_entry(state: &mut AccountState, entry: &Entry, shards: usize) {
    match entry {
        Entry::Report(r) => {
            apply_to(state, r, shards);
        }
        Entry::Order(r) => {
            // A record written before orders kept when they were placed has 0 there: its
            // last change is the nearest time known.
            let created = u64::try_from(r.last_qty.0).ok().filter(|&ts| ts > 0);
            state.put(OrderView { created_ts: created.unwrap_or(r.ts.0), ..view_of(r) });
            forget_oldest_closed(state);
        }
        Entry::Fill(r) => push_fill(state, fill_of(r, shards)),
    }
}

/// The order as a report leaves it.
pub(super) fn view_of(r: &ExecReport) -> OrderView {
    OrderView {
        id: r.order_id,
        client_order_id: r.client_order_id,
        instrument: r.instrument,
        side: r.side,
        order_type: r.order_type,
        price: r.price,
        leaves: r.leaves_qty,
        filled: r.cum_qty,
        status: status_of(r.kind),
        reason: r.reason,
        updated_ts: r.ts.0,
        seq: r.seq.0,
        created_ts: r.ts.0,
    }
}

/// A fill's id: its report's sequence made unique across `shards` (each shard numbers an
/// account's reports itself, so two shards' fills can share a sequence), `seq * shards +
/// shard`. Increasing with the sequence on each shard; with one shard, the sequence.
pub fn fill_id(r: &ExecReport, shards: usize) -> u64 {
    let shard = r.instrument.shard(shards) as u64;
    r.seq.0.saturating_mul(shards.max(1) as u64).saturating_add(shard)
}

/// The fill a fill report is.
pub(super) fn fill_of(r: &ExecReport, shards: usize) -> FillView {
    FillView {
        id: fill_id(r, shards),
        seq: r.seq.0,
        ts: r.ts.0,
        order_id: r.order_id,
        instrument: r.instrument,
        side: r.side,
        price: r.last_price,
        qty: r.last_qty,
    }
}
