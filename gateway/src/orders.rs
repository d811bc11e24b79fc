//! Users' orders and fills, kept by the gateway from the engine's execution reports, and
//! the waiters that turn an asynchronous engine answer into an HTTP response.
//!
//! The hub thread applies every execution report of a user account here (feed accounts
//! are ignored, so memory follows user activity, and each account keeps at most
//! [`ORDERS_KEPT`] orders and [`FILLS_KEPT`] fills). Request handlers read under a short
//! lock; the engine itself is never locked or queried for these.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tickgate_engine::{
    AccountId, ExecKind, ExecReport, InstrumentId, OrderId, OrderType, Price, Qty, RejectReason,
    Side,
};
use tokio::sync::{broadcast, oneshot};

/// Orders one account keeps (oldest closed ones go first).
pub const ORDERS_KEPT: usize = 10_000;
/// Fills one account keeps.
pub const FILLS_KEPT: usize = 10_000;

/// An order's life so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Resting in the book.
    Open,
    /// Completely filled.
    Filled,
    /// Canceled (by the user, IOC/FOK/market remainder, self-trade prevention...).
    Canceled,
    /// Refused by the engine.
    Rejected,
}

impl Status {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Filled => "filled",
            Status::Canceled => "canceled",
            Status::Rejected => "rejected",
        }
    }
}

/// One order as the user sees it.
#[derive(Clone, Copy, Debug)]
pub struct OrderView {
    /// Engine id.
    pub id: OrderId,
    /// The client's id.
    pub client_order_id: u64,
    /// Market.
    pub instrument: InstrumentId,
    /// Side.
    pub side: Side,
    /// Type.
    pub order_type: OrderType,
    /// Limit price (0 for market orders).
    pub price: Price,
    /// Open quantity.
    pub leaves: Qty,
    /// Filled quantity.
    pub filled: Qty,
    /// Status.
    pub status: Status,
    /// Why it was rejected or canceled.
    pub reason: RejectReason,
    /// Engine timestamp of the last change.
    pub updated_ts: u64,
}

/// One fill.
#[derive(Clone, Copy, Debug)]
pub struct FillView {
    /// Increasing per account (the report's sequence): the pagination cursor.
    pub id: u64,
    /// Engine timestamp.
    pub ts: u64,
    /// Order.
    pub order_id: OrderId,
    /// Market.
    pub instrument: InstrumentId,
    /// Side of the order.
    pub side: Side,
    /// Price.
    pub price: Price,
    /// Quantity.
    pub qty: Qty,
}

#[derive(Default)]
struct AccountState {
    orders: BTreeMap<OrderId, OrderView>,
    fills: VecDeque<FillView>,
}

/// Which reports answer a waiting request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    /// A new order: accepted or rejected.
    New,
    /// A cancel: canceled or rejected.
    Cancel,
    /// A replace: replaced or rejected.
    Replace,
}

impl Awaiting {
    fn answered_by(self, kind: ExecKind) -> bool {
        matches!(
            (self, kind),
            (_, ExecKind::Rejected)
                | (Awaiting::New, ExecKind::Accepted)
                | (Awaiting::Cancel, ExecKind::Canceled)
                | (Awaiting::Replace, ExecKind::Replaced)
        )
    }
}

/// A request waiting for the engine's answer about one order.
struct Waiter {
    token: u64,
    awaiting: Awaiting,
    tx: oneshot::Sender<ExecReport>,
}

/// A registered wait: the answer, and the token that [`OrderStore::forget`] takes.
#[derive(Debug)]
pub struct Wait {
    /// Resolves with the engine's answer.
    pub answer: oneshot::Receiver<ExecReport>,
    /// Identifies this wait.
    pub token: u64,
}

/// Orders, fills and waiters for every user account.
#[derive(Default)]
pub struct OrderStore {
    users: HashSet<AccountId>,
    accounts: Mutex<HashMap<AccountId, AccountState>>,
    /// Per order, the requests waiting for the engine's answer, oldest first (several
    /// requests may be in flight for one order, e.g. a replace and a cancel).
    waiters: Mutex<HashMap<OrderId, Vec<Waiter>>>,
    next_token: std::sync::atomic::AtomicU64,
    /// Live execution reports per account, for the WebSocket `orders` channel.
    streams: Mutex<HashMap<AccountId, broadcast::Sender<ExecReport>>>,
}

/// Reports one account's `orders` subscribers may fall behind by before they are told
/// they missed some (and should refetch over REST).
pub const ORDER_STREAM_CAPACITY: usize = 1024;

impl std::fmt::Debug for OrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderStore").field("users", &self.users.len()).finish_non_exhaustive()
    }
}

impl OrderStore {
    /// A store for these user accounts.
    pub fn new(users: impl IntoIterator<Item = AccountId>) -> Self {
        OrderStore { users: users.into_iter().collect(), ..OrderStore::default() }
    }

    /// Registers interest in the engine's answer about `order` (before submitting it).
    pub fn wait(&self, order: OrderId, awaiting: Awaiting) -> Wait {
        let (tx, answer) = oneshot::channel();
        let token = self.next_token.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.entry(order).or_default().push(Waiter { token, awaiting, tx });
        Wait { answer, token }
    }

    /// A live feed of `account`'s execution reports (transfers included), in engine order.
    pub fn subscribe(&self, account: AccountId) -> broadcast::Receiver<ExecReport> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .entry(account)
            .or_insert_with(|| broadcast::channel(ORDER_STREAM_CAPACITY).0)
            .subscribe()
    }

    /// Drops interest (the request gave up).
    pub fn forget(&self, order: OrderId, token: u64) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = waiters.get_mut(&order) {
            list.retain(|w| w.token != token);
            if list.is_empty() {
                waiters.remove(&order);
            }
        }
    }

    /// Applies one execution report (called by the hub thread, in engine order).
    pub fn apply(&self, r: &ExecReport) {
        if !self.users.contains(&r.account) {
            return;
        }
        {
            let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(stream) = streams.get(&r.account) {
                // No receiver left is fine: nobody is listening right now.
                let _ = stream.send(*r);
            }
        }
        if r.kind == ExecKind::Transferred {
            return;
        }
        {
            let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            let state = accounts.entry(r.account).or_default();
            apply_to(state, r);
        }
        // The oldest request this report answers (the engine answers in submission order).
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = waiters.get_mut(&r.order_id) {
            if let Some(at) = list.iter().position(|w| w.awaiting.answered_by(r.kind)) {
                let _ = list.remove(at).tx.send(*r);
            }
            if list.is_empty() {
                waiters.remove(&r.order_id);
            }
        }
    }

    /// Records an order the engine holds open (after a restart: orders placed before the
    /// newest snapshot are not in the replayed reports). The engine's open and filled
    /// quantities win over anything recorded.
    pub fn restore_open(&self, instrument: InstrumentId, o: &tickgate_engine::RestingOrder) {
        if !self.users.contains(&o.account) {
            return;
        }
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let view = accounts.entry(o.account).or_default().orders.entry(o.id).or_insert(OrderView {
            id: o.id,
            client_order_id: o.client_order_id,
            instrument,
            side: o.side,
            order_type: o.order_type,
            price: o.price,
            leaves: o.leaves,
            filled: o.filled,
            status: Status::Open,
            reason: RejectReason::None,
            updated_ts: 0,
        });
        view.price = o.price;
        view.leaves = o.leaves;
        view.filled = o.filled;
        view.status = Status::Open;
    }

    /// One order of `account`.
    pub fn order(&self, account: AccountId, id: OrderId) -> Option<OrderView> {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.get(&account)?.orders.get(&id).copied()
    }

    /// Orders of `account`, newest first, with ids below `before`, filtered.
    pub fn orders(
        &self,
        account: AccountId,
        before: Option<OrderId>,
        keep: impl Fn(&OrderView) -> bool,
        limit: usize,
    ) -> Vec<OrderView> {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = accounts.get(&account) else { return Vec::new() };
        let upper = before.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        state
            .orders
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .map(|(_, o)| *o)
            .filter(|o| keep(o))
            .take(limit)
            .collect()
    }

    /// Fills of `account`, newest first, with ids below `before`, filtered.
    pub fn fills(
        &self,
        account: AccountId,
        before: Option<u64>,
        instrument: Option<InstrumentId>,
        limit: usize,
    ) -> Vec<FillView> {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = accounts.get(&account) else { return Vec::new() };
        state
            .fills
            .iter()
            .rev()
            .filter(|f| before.is_none_or(|b| f.id < b))
            .filter(|f| instrument.is_none_or(|i| f.instrument == i))
            .take(limit)
            .copied()
            .collect()
    }
}

fn apply_to(state: &mut AccountState, r: &ExecReport) {
    let status = match r.kind {
        ExecKind::Rejected => Status::Rejected,
        ExecKind::Canceled => Status::Canceled,
        ExecKind::Filled => Status::Filled,
        _ => Status::Open,
    };
    if r.kind == ExecKind::Rejected && state.orders.contains_key(&r.order_id) {
        // A refused cancel or replace: the order itself is unchanged.
        return;
    }
    let view = state.orders.entry(r.order_id).or_insert(OrderView {
        id: r.order_id,
        client_order_id: r.client_order_id,
        instrument: r.instrument,
        side: r.side,
        order_type: r.order_type,
        price: r.price,
        leaves: r.leaves_qty,
        filled: r.cum_qty,
        status,
        reason: r.reason,
        updated_ts: r.ts.0,
    });
    view.price = r.price;
    view.leaves = r.leaves_qty;
    view.filled = r.cum_qty;
    view.status = status;
    view.reason = r.reason;
    view.updated_ts = r.ts.0;
    if matches!(r.kind, ExecKind::PartiallyFilled | ExecKind::Filled) {
        if state.fills.len() == FILLS_KEPT {
            state.fills.pop_front();
        }
        state.fills.push_back(FillView {
            id: r.seq.0,
            ts: r.ts.0,
            order_id: r.order_id,
            instrument: r.instrument,
            side: r.side,
            price: r.last_price,
            qty: r.last_qty,
        });
    }
    if state.orders.len() > ORDERS_KEPT {
        // Forget the oldest closed order (open ones are always kept).
        let oldest_closed =
            state.orders.iter().find(|(_, o)| o.status != Status::Open).map(|(id, _)| *id);
        if let Some(id) = oldest_closed {
            state.orders.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::{Seq, UnixNanos};

    fn report(kind: ExecKind, order: u64) -> ExecReport {
        ExecReport {
            account: AccountId(1),
            seq: Seq(1),
            ts: UnixNanos(1),
            kind,
            reason: RejectReason::None,
            instrument: InstrumentId(0),
            order_id: OrderId(order),
            client_order_id: 0,
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Price(10),
            last_price: Price(0),
            last_qty: Qty(0),
            leaves_qty: Qty(5),
            cum_qty: Qty(0),
        }
    }

    #[test]
    fn several_requests_on_one_order_each_get_their_own_answer() {
        let store = OrderStore::new([AccountId(1)]);
        store.apply(&report(ExecKind::Accepted, 7));
        let mut replace = store.wait(OrderId(7), Awaiting::Replace);
        let mut cancel = store.wait(OrderId(7), Awaiting::Cancel);
        let mut other = store.wait(OrderId(7), Awaiting::Replace);
        store.forget(OrderId(7), other.token);
        store.apply(&report(ExecKind::Replaced, 7));
        assert_eq!(replace.answer.try_recv().map(|r| r.kind), Ok(ExecKind::Replaced));
        assert!(cancel.answer.try_recv().is_err(), "a replace does not answer a cancel");
        store.apply(&report(ExecKind::Canceled, 7));
        assert_eq!(cancel.answer.try_recv().map(|r| r.kind), Ok(ExecKind::Canceled));
        assert!(other.answer.try_recv().is_err(), "a forgotten wait gets nothing");
        assert!(store.waiters.lock().unwrap().is_empty(), "answered waits are gone");
        assert_eq!(store.order(AccountId(1), OrderId(7)).map(|o| o.status), Some(Status::Canceled));
    }
}
