//! Users' orders and fills, kept by the gateway from the engine's execution reports, and
//! the waiters that turn an asynchronous engine answer into an HTTP response.
//!
//! The hub thread applies every execution report of a user account here (feed accounts
//! are ignored, so memory follows user activity, and each account keeps at most
//! [`ORDERS_KEPT`] orders and [`FILLS_KEPT`] fills). Request handlers read under a short
//! lock; the engine itself is never locked or queried for these.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tickgate_engine::{
    AccountId, ExecKind, ExecReport, InstrumentId, OrderId, OrderType, Price, Qty, RejectReason,
    Side, TransferReport, UnixNanos, Watermark,
};
use tokio::sync::{broadcast, oneshot};

use crate::history::{Entry, HistoryWriter};

mod account;
mod answers;
mod projection;
pub mod stored;

pub use account::fill_id;
use account::*;
use answers::Waiter;
pub use answers::{Answer, AnswerGate, Awaiting, Verdict, Wait};
pub use projection::OrderProjection;

/// One report on an account's private stream, in the account's report sequence: an
/// order's execution, or a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountReport {
    /// About one of the account's orders.
    Exec(ExecReport),
    /// A transfer applied to the account's ledger on this shard.
    Transfer(TransferReport, usize),
}

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Why it was rejected or canceled (`None` while it is neither).
    pub reason: Option<RejectReason>,
    /// Engine timestamp of the last change.
    pub updated_ts: u64,
    /// Sequence of the report that last changed it (0: restored from the engine's book).
    pub seq: u64,
    /// Engine timestamp of its first report, when it was placed (0: not known, an order
    /// restored from the engine's book without history): orders are listed by it.
    pub created_ts: u64,
}

impl OrderView {
    /// `report` with this order's own fields (client id, side, type, price, open and filled
    /// quantities) in place of its.
    pub fn onto(&self, report: ExecReport) -> ExecReport {
        ExecReport {
            client_order_id: self.client_order_id,
            side: self.side,
            order_type: self.order_type,
            price: self.price,
            leaves_qty: self.leaves,
            cum_qty: self.filled,
            ..report
        }
    }
}

/// One fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillView {
    /// Unique per account, increasing on each shard: the report's sequence made unique
    /// across shards (see [`fill_id`]), and the pagination cursor.
    pub id: u64,
    /// The report's sequence (on its instrument's shard).
    pub seq: u64,
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
    streams: Mutex<HashMap<AccountId, broadcast::Sender<AccountReport>>>,
    /// Where applied reports are recorded, once attached (see [`crate::history`]).
    history: Mutex<Option<HistoryWriter>>,
    /// A history write failed (logged once; the store keeps working in memory).
    history_failed: std::sync::atomic::AtomicBool,
    /// How far the history file covers the engine's journal once synced (see [`stored`]),
    /// once attached: the engine prunes its snapshots by it, so it moves only after a sync.
    stored: Mutex<Option<(Watermark, std::path::PathBuf)>>,
    /// Per shard, how far what was written to the history file reaches (not yet synced).
    written: Mutex<Vec<u64>>,
    /// Per shard, the timestamp of the last command whose reports are all applied.
    applied: Mutex<Vec<u64>>,
    /// The engine's shard count (0 until set: taken as 1), for fill ids.
    shards: std::sync::atomic::AtomicUsize,
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

    /// Sets the engine's shard count (before any report is applied or history loaded:
    /// fill ids depend on it).
    pub fn set_shards(&self, shards: usize) {
        self.shards.store(shards, std::sync::atomic::Ordering::Relaxed);
    }

    fn shards(&self) -> usize {
        self.shards.load(std::sync::atomic::Ordering::Relaxed).max(1)
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
    pub fn subscribe(&self, account: AccountId) -> broadcast::Receiver<AccountReport> {
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

    /// Applies one execution report (called by the hub thread, in engine order, and for
    /// the journal's replay at start), and records it in the history once attached. A
    /// report already reflected (same or older sequence for its account and market) is
    /// skipped.
    ///
    /// Returns the answer of the request waiting for this report, if any. The caller sends
    /// it once the command's later reports are applied too (the engine emits them together:
    /// the hub knows a command ended when the next event has another timestamp or the
    /// ring's head is reached), so that the order the request reads is the command's
    /// final verdict.
    #[must_use = "the answer is sent once the command's reports are all applied"]
    pub fn apply(&self, r: &ExecReport) -> Option<Answer> {
        if !self.users.contains(&r.account) {
            return None;
        }
        self.stream(r.account, AccountReport::Exec(*r));
        {
            let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            let state = accounts.entry(r.account).or_default();
            if apply_to(state, r, self.shards()) {
                let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(h) = history.as_mut() {
                    h.push(Entry::Report(*r));
                }
            }
        }
        // The oldest request this report answers (the engine answers in submission order).
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let list = waiters.get_mut(&r.order_id)?;
        let answer = list.iter().position(|w| w.awaiting.answered_by(r.kind)).map(|at| Answer {
            tx: list.remove(at).tx,
            report: *r,
            order: None,
        });
        if list.is_empty() {
            waiters.remove(&r.order_id);
        }
        answer
    }

    /// Passes a transfer applied on `shard` to `t.account`'s live feed (a user's; orders
    /// and fills do not change, and the history does not record transfers).
    pub fn apply_transfer(&self, t: &TransferReport, shard: usize) {
        if self.users.contains(&t.account) {
            self.stream(t.account, AccountReport::Transfer(*t, shard));
        }
    }

    fn stream(&self, account: AccountId, report: AccountReport) {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stream) = streams.get(&account) {
            // No receiver left is fine: nobody is listening right now.
            let _ = stream.send(report);
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
        let state = accounts.entry(o.account).or_default();
        let recorded = state.orders.get(&o.id).copied().unwrap_or(OrderView {
            id: o.id,
            client_order_id: o.client_order_id,
            instrument,
            side: o.side,
            order_type: o.order_type,
            price: o.price,
            leaves: o.leaves,
            filled: o.filled,
            status: Status::Open,
            reason: None,
            updated_ts: 0,
            seq: 0,
            created_ts: 0,
        });
        state.put(OrderView {
            price: o.price,
            leaves: o.leaves,
            filled: o.filled,
            status: Status::Open,
            ..recorded
        });
    }

    /// Rebuilds the store from history records (at start, before anything else is
    /// applied). Records of accounts that are not users here are ignored.
    pub fn load(&self, entries: &[Entry]) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            let account = entry.report().account;
            if self.users.contains(&account) {
                load_entry(accounts.entry(account).or_default(), entry, self.shards());
            }
        }
    }

    /// Every record that rebuilds the store's content (a compact history), accounts in id
    /// order.
    pub fn dump(&self) -> Vec<Entry> {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<_> = accounts.keys().copied().collect();
        ids.sort_by_key(|a| a.0);
        let mut out = Vec::new();
        for id in ids {
            dump_account(id, &accounts[&id], &mut out);
        }
        out
    }

    /// From now on every new report applied is recorded in `writer`.
    pub fn attach_history(&self, writer: HistoryWriter) {
        *self.history.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
    }

    /// Writes the reports recorded since the last call (the hub calls this after every
    /// pass), and rewrites the file compactly when appends have grown it enough.
    pub fn flush_history(&self) {
        let result = {
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            let Some(h) = history.as_mut() else { return };
            h.flush().map(|()| h.wants_compaction().then(|| h.dir().to_path_buf()))
        };
        let result = match result {
            Ok(Some(dir)) => {
                // Only the hub changes the store, and this is the hub: the dump and the
                // new file agree, and nothing is pushed meanwhile.
                let dump = self.dump();
                HistoryWriter::create(&dir, dump).map(|w| self.attach_history(w)).inspect_err(
                    |_| {
                        // Keep appending to the old file; do not retry on every pass.
                        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(h) = history.as_mut() {
                            h.postpone_compaction();
                        }
                    },
                )
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if !self.history_failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!("order history not written: {e} (orders and fills from now on may be missing from it after a restart; balances, positions and open orders come from the engine and are not affected)");
            }
        }
    }

    /// Records that every report of `shard`'s commands up to the one stamped `ts` is
    /// applied (the projection, after each pass).
    pub fn mark_applied(&self, shard: usize, ts: UnixNanos) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if applied.len() <= shard {
            applied.resize(shard + 1, 0);
        }
        applied[shard] = applied[shard].max(ts.0);
    }

    /// The timestamp of `shard`'s last command whose reports are all applied.
    pub fn applied_through(&self, shard: usize) -> UnixNanos {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        UnixNanos(applied.get(shard).copied().unwrap_or(0))
    }

    /// Records that every report of `shard`'s commands up to the one stamped `ts` is
    /// written to the history file (the projection, after [`OrderStore::flush_history`]);
    /// the watermark follows at the next [`OrderStore::sync_history`].
    pub fn mark_stored(&self, shard: usize, ts: UnixNanos) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if written.len() <= shard {
            written.resize(shard + 1, 0);
        }
        written[shard] = written[shard].max(ts.0);
    }

    /// Keeps `mark` up to date with what the history file holds on disk, saving it in
    /// `dir` after every sync (see [`stored`]). The file holds what `mark` says now.
    pub fn attach_watermark(&self, mark: Watermark, dir: std::path::PathBuf) {
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) = mark.all();
        *self.stored.lock().unwrap_or_else(|e| e.into_inner()) = Some((mark, dir));
    }

    /// Puts what was written on disk (`fdatasync`); called about once a second, off the
    /// hub thread. A `kill -9` loses nothing written; this bounds what a power loss can.
    pub fn sync_history(&self) {
        // Taken first: every record they cover was written before, so it is synced now
        // or was before (they cover no more than what is on disk after the sync).
        let marks = self.written.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let file = {
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            history.as_mut().and_then(HistoryWriter::take_unsynced)
        };
        let target = {
            let stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
            stored.as_ref().map(|(mark, dir)| (mark.clone(), dir.clone()))
        };
        if let Some(Err(e)) | Some(Ok(Err(e))) = file.map(|f| f.map(|f| f.sync_data())) {
            if !self.history_failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!("order history not synced: {e}");
            }
            // Not on disk: the watermark (and the snapshots the engine keeps) stay.
            return;
        }
        if let Some((mark, dir)) = target {
            match stored::save(&dir, &marks) {
                // On disk, file and marks: the engine may now prune up to them. Before,
                // the marks ran up to a second ahead of the disk, and a power loss could
                // take reports whose snapshot was already pruned.
                Ok(()) => {
                    for (shard, ts) in marks.iter().enumerate() {
                        mark.advance(shard, UnixNanos(*ts));
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "order history watermark not saved: {e} (a restart replays more)"
                    )
                }
            }
        }
    }

    /// How many orders of `account` are open.
    pub fn open_count(&self, account: AccountId) -> usize {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.get(&account).map_or(0, AccountState::open_count)
    }

    /// One order of `account`.
    pub fn order(&self, account: AccountId, id: OrderId) -> Option<OrderView> {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.get(&account)?.orders.get(&id).copied()
    }

    /// Orders of `account`, newest first (placed, in engine time, then id), after the
    /// order `before` in that order, filtered. A `before` no longer kept was pushed out as
    /// the oldest closed order: nothing listed comes after it. (Not id order: a gateway
    /// node takes ids in blocks, so ids through two nodes do not follow time.)
    pub fn orders(
        &self,
        account: AccountId,
        before: Option<OrderId>,
        keep: impl Fn(&OrderView) -> bool,
        limit: usize,
    ) -> Vec<OrderView> {
        use std::ops::Bound;
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = accounts.get(&account) else { return Vec::new() };
        let upper = match before.map(|id| state.orders.get(&id).map(|o| (o.created_ts, id))) {
            None => Bound::Unbounded,
            Some(Some(place)) => Bound::Excluded(place),
            Some(None) => return Vec::new(),
        };
        state
            .by_time
            .range((Bound::Unbounded, upper))
            .rev()
            .filter_map(|(_, id)| state.orders.get(id).copied())
            .filter(|o| keep(o))
            .take(limit)
            .collect()
    }

    /// Fills of `account`, newest first (engine time, then id), after the fill with id
    /// `before` in that order, filtered. A `before` no longer kept was pushed out as the
    /// oldest: nothing kept comes after it.
    pub fn fills(
        &self,
        account: AccountId,
        before: Option<u64>,
        instrument: Option<InstrumentId>,
        limit: usize,
    ) -> Vec<FillView> {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = accounts.get(&account) else { return Vec::new() };
        let cursor = match before {
            Some(id) => match state.fill_times.get(&id) {
                Some(ts) => Some((*ts, id)),
                None => return Vec::new(),
            },
            None => None,
        };
        state
            .fills
            .iter()
            .rev()
            .filter(|f| cursor.is_none_or(|c| (f.ts, f.id) < c))
            .filter(|f| instrument.is_none_or(|i| f.instrument == i))
            .take(limit)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::{Seq, UnixNanos};

    fn report(kind: ExecKind, order: u64, seq: u64) -> ExecReport {
        ExecReport {
            account: AccountId(1),
            seq: Seq(seq),
            ts: UnixNanos(1),
            kind,
            reason: None,
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
    fn an_answer_waits_for_the_rest_of_its_command() {
        // A market order: accepted, then two fills, in one command (one timestamp).
        let store = OrderStore::new([AccountId(1)]);
        let mut gate = AnswerGate::new(1);
        let mut wait = store.wait(OrderId(7), Awaiting::New);
        let command = [report(ExecKind::Accepted, 7, 1), fill(7, 2, 2, 3, 2), fill(7, 3, 3, 0, 5)];
        for r in &command {
            gate.event(0, r.ts, &store);
            if let Some(answer) = store.apply(r) {
                gate.hold(0, answer, &store);
            }
            gate.release();
            assert!(wait.answer.try_recv().is_err(), "no answer inside the command");
        }
        // The next command (another timestamp) closes it; the order read then is final.
        gate.event(0, tickgate_engine::UnixNanos(2), &store);
        gate.release();
        assert_eq!(wait.answer.try_recv().map(|v| v.report.kind), Ok(ExecKind::Accepted));
        let order = store.order(AccountId(1), OrderId(7)).expect("recorded");
        assert_eq!((order.status, order.filled), (Status::Filled, Qty(5)));
        // Reaching the ring's head closes a command too.
        let mut cancel = store.wait(OrderId(8), Awaiting::New);
        let answer = store.apply(&report(ExecKind::Accepted, 8, 4)).expect("answers");
        gate.event(0, tickgate_engine::UnixNanos(3), &store);
        gate.hold(0, answer, &store);
        gate.release();
        assert!(cancel.answer.try_recv().is_err());
        gate.caught_up(0, &store);
        gate.release();
        assert!(cancel.answer.try_recv().is_ok());
    }

    /// The answer's order is the order as its own command left it: a later command's fill
    /// applied before the answer goes out (same hub pass) is not in it.
    #[test]
    fn an_answer_shows_its_command_not_the_next() {
        let store = OrderStore::new([AccountId(1)]);
        let mut gate = AnswerGate::new(1);
        let mut wait = store.wait(OrderId(7), Awaiting::New);
        let accepted = report(ExecKind::Accepted, 7, 1);
        gate.event(0, accepted.ts, &store);
        let answer = store.apply(&accepted).expect("answers");
        gate.hold(0, answer, &store);
        // The next command, a taker's, fills it; the pass ends after both.
        let taker = ExecReport { ts: tickgate_engine::UnixNanos(2), ..fill(7, 2, 5, 0, 5) };
        gate.event(0, taker.ts, &store);
        assert!(store.apply(&taker).is_none());
        gate.release();
        let verdict = wait.answer.try_recv().expect("answered");
        let order = verdict.order.expect("the order");
        assert_eq!((order.status, order.filled), (Status::Open, Qty(0)));
        let now = store.order(AccountId(1), OrderId(7)).expect("recorded");
        assert_eq!(now.status, Status::Filled);
    }

    #[test]
    fn past_the_limit_the_oldest_closed_order_goes_and_open_ones_stay() {
        let store = OrderStore::new([AccountId(1)]);
        let open = |id| store.order(AccountId(1), OrderId(id)).map(|o| o.status);
        // A thousand old orders stay open; then the rest come and close, one by one.
        let mut seq = 0;
        for id in 1..=ORDERS_KEPT as u64 + 500 {
            seq += 1;
            let _ = store.apply(&report(ExecKind::Accepted, id, seq));
            if id > 1_000 {
                seq += 1;
                let _ = store.apply(&report(ExecKind::Canceled, id, seq));
            }
        }
        let kept = store.orders(AccountId(1), None, |_| true, usize::MAX);
        assert_eq!(kept.len(), ORDERS_KEPT);
        assert_eq!((open(1), open(1_000)), (Some(Status::Open), Some(Status::Open)));
        // The 500 oldest closed ones went; the next is kept.
        assert_eq!((open(1_001), open(1_500)), (None, None));
        assert_eq!(open(1_501), Some(Status::Canceled));
        // An order restored open (after a restart) counts as open again: a closed order
        // goes instead of it.
        let resting = tickgate_engine::RestingOrder {
            id: OrderId(1_501),
            client_order_id: 0,
            account: AccountId(1),
            price: Price(10),
            leaves: Qty(5),
            filled: Qty(0),
            side: Side::Buy,
            order_type: OrderType::Limit,
            stp: tickgate_engine::StpMode::CancelResting,
        };
        store.restore_open(InstrumentId(0), &resting);
        let _ = store.apply(&report(ExecKind::Accepted, 20_000, seq + 1));
        assert_eq!((open(1_501), open(1_502)), (Some(Status::Open), None));
    }

    /// Orders placed through two gateway nodes (ids from their blocks, 4,096 apart) are
    /// listed by when they were placed, as on the single process, pages included, and
    /// the order survives the history's compact form.
    #[test]
    fn orders_are_listed_by_when_they_were_placed_not_by_id() {
        let store = OrderStore::new([AccountId(1)]);
        let placed = [(5_000, 1), (10, 2), (5_001, 3), (11, 4)];
        for (seq, (id, ts)) in placed.iter().enumerate() {
            let r = ExecReport {
                ts: UnixNanos(*ts),
                ..report(ExecKind::Accepted, *id, seq as u64 + 1)
            };
            let _ = store.apply(&r);
        }
        // A later change does not move an order.
        let canceled = ExecReport { ts: UnixNanos(9), ..report(ExecKind::Canceled, 10, 5) };
        let _ = store.apply(&canceled);
        let ids = |orders: Vec<OrderView>| orders.iter().map(|o| o.id.0).collect::<Vec<_>>();
        let all = |store: &OrderStore| store.orders(AccountId(1), None, |_| true, usize::MAX);
        assert_eq!(ids(all(&store)), [11, 5_001, 10, 5_000]);
        let page = |before| ids(store.orders(AccountId(1), Some(OrderId(before)), |_| true, 2));
        assert_eq!(page(5_001), [10, 5_000]);
        assert_eq!(page(10), [5_000]);
        assert!(page(77).is_empty(), "a cursor not kept: nothing after it");
        let compact = OrderStore::new([AccountId(1)]);
        compact.load(&store.dump());
        assert_eq!(all(&compact), all(&store));
    }

    #[test]
    fn several_requests_on_one_order_each_get_their_own_answer() {
        let store = OrderStore::new([AccountId(1)]);
        if let Some(answer) = store.apply(&report(ExecKind::Accepted, 7, 1)) {
            answer.send();
        }
        let mut replace = store.wait(OrderId(7), Awaiting::Replace);
        let mut cancel = store.wait(OrderId(7), Awaiting::Cancel);
        let mut other = store.wait(OrderId(7), Awaiting::Replace);
        store.forget(OrderId(7), other.token);
        if let Some(answer) = store.apply(&report(ExecKind::Replaced, 7, 2)) {
            answer.send();
        }
        assert_eq!(replace.answer.try_recv().map(|v| v.report.kind), Ok(ExecKind::Replaced));
        assert!(cancel.answer.try_recv().is_err(), "a replace does not answer a cancel");
        if let Some(answer) = store.apply(&report(ExecKind::Canceled, 7, 3)) {
            answer.send();
        }
        assert_eq!(cancel.answer.try_recv().map(|v| v.report.kind), Ok(ExecKind::Canceled));
        assert!(other.answer.try_recv().is_err(), "a forgotten wait gets nothing");
        assert!(store.waiters.lock().unwrap().is_empty(), "answered waits are gone");
        assert_eq!(store.order(AccountId(1), OrderId(7)).map(|o| o.status), Some(Status::Canceled));
    }

    fn fill(order: u64, seq: u64, qty: i64, leaves: i64, cum: i64) -> ExecReport {
        let kind = if leaves == 0 { ExecKind::Filled } else { ExecKind::PartiallyFilled };
        ExecReport {
            last_price: Price(11),
            last_qty: Qty(qty),
            leaves_qty: Qty(leaves),
            cum_qty: Qty(cum),
            ..report(kind, order, seq)
        }
    }

    fn content(store: &OrderStore) -> (Vec<OrderView>, Vec<FillView>) {
        (
            store.orders(AccountId(1), None, |_| true, usize::MAX),
            store.fills(AccountId(1), None, None, usize::MAX),
        )
    }

    /// A store for account 1 with an empty history file in a fresh temporary directory.
    fn with_history(name: &str) -> (std::path::PathBuf, OrderStore) {
        let dir =
            std::env::temp_dir().join(format!("tickgate-orders-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = OrderStore::new([AccountId(1)]);
        store.attach_history(HistoryWriter::create(&dir, []).expect("history file"));
        (dir, store)
    }

    /// The engine prunes its snapshots by the watermark: it must not run ahead of what is
    /// on disk, or a power loss takes reports whose snapshot is gone.
    #[test]
    fn the_watermark_moves_only_once_the_history_is_on_disk() {
        let (dir, store) = with_history("watermark");
        let retention = tickgate_engine::Retention::new(2);
        store.attach_watermark(retention.register(&[7, 9]), dir.clone());
        let _ = store.apply(&report(ExecKind::Accepted, 1, 1));
        store.flush_history();
        store.mark_stored(0, UnixNanos(500));
        assert_eq!((retention.floor(0), retention.floor(1)), (Some(7), Some(9)), "written only");
        assert_eq!(stored::load(&dir).expect("marks"), Vec::<u64>::new());
        store.sync_history();
        assert_eq!((retention.floor(0), retention.floor(1)), (Some(500), Some(9)));
        assert_eq!(stored::load(&dir).expect("marks"), vec![500, 9]);
        // Marks that moved with nothing new written (commands without reports) follow too.
        store.mark_stored(1, UnixNanos(900));
        store.sync_history();
        assert_eq!(retention.floor(1), Some(900));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn history_rebuilds_the_store_and_replayed_reports_apply_once() {
        let (dir, live) = with_history("history");
        let reports = [
            report(ExecKind::Accepted, 1, 1),
            fill(1, 2, 2, 3, 2),
            report(ExecKind::Accepted, 2, 3),
            // A refused cancel leaves the order as it is.
            ExecReport {
                reason: Some(RejectReason::UnknownOrder),
                ..report(ExecKind::CancelRejected, 2, 4)
            },
            report(ExecKind::Canceled, 2, 5),
            fill(1, 6, 3, 0, 5),
        ];
        for r in &reports[..5] {
            let _ = live.apply(r);
        }
        live.flush_history();

        // A restart: the file, then the journal's replay from a snapshot taken after
        // report 1 (reports 2 to 5 are in both; 6 only in the journal).
        let restarted = OrderStore::new([AccountId(1)]);
        restarted.load(&crate::history::load(&dir).expect("history").entries);
        assert_eq!(content(&restarted), content(&live));
        for r in &reports[1..] {
            let _ = restarted.apply(r);
        }
        let _ = live.apply(&reports[5]);
        assert_eq!(content(&restarted), content(&live));
        let (orders, fills) = content(&restarted);
        assert_eq!(fills.len(), 2, "a replayed fill is not counted twice: {fills:?}");
        assert_eq!(orders[1].status, Status::Filled);
        assert_eq!(orders[0].status, Status::Canceled);

        // The compact form rebuilds the same content, and a repeated report changes none.
        let compact = OrderStore::new([AccountId(1)]);
        compact.load(&live.dump());
        assert_eq!(content(&compact), content(&live));
        for r in &reports {
            let _ = compact.apply(r);
        }
        assert_eq!(content(&compact), content(&live), "repeats are recognised after compaction");

        // A hub that was lapped missed the first fill; the replay brings it back, in its
        // place, and does not take the order back to its older state.
        let lapped = OrderStore::new([AccountId(1)]);
        for r in reports.iter().filter(|r| r.seq.0 != 2) {
            let _ = lapped.apply(r);
        }
        assert_eq!(content(&lapped).1.len(), 1);
        for r in &reports {
            let _ = lapped.apply(r);
        }
        assert_eq!(content(&lapped), content(&live));

        // Other accounts' records are not loaded.
        let other = OrderStore::new([AccountId(2)]);
        other.load(&live.dump());
        assert!(other.dump().is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn fills_of_two_shards_with_one_sequence_are_both_kept() {
        // Each shard numbers the account's reports itself: instrument 0 is on shard 0 and
        // instrument 1 on shard 1 of two, and both fills carry report sequence 2.
        let on = |instrument: u32, r: ExecReport| ExecReport {
            instrument: InstrumentId(instrument),
            ..r
        };
        let reports = [
            on(0, report(ExecKind::Accepted, 1, 1)),
            on(1, report(ExecKind::Accepted, 2, 1)),
            on(0, fill(1, 2, 5, 0, 5)),
            on(1, fill(2, 2, 5, 0, 5)),
        ];
        let store = OrderStore::new([AccountId(1)]);
        store.set_shards(2);
        for r in &reports {
            let _ = store.apply(r);
        }
        let fills = store.fills(AccountId(1), None, None, usize::MAX);
        let got: Vec<_> = fills.iter().map(|f| (f.id, f.seq, f.instrument.0)).collect();
        assert_eq!(got, [(5, 2, 1), (4, 2, 0)], "both fills, newest first");
        // The cursor pages through both, and a repeated report adds no fill.
        assert_eq!(store.fills(AccountId(1), Some(5), None, 10).len(), 1);
        // Newest first is engine time, not id: a quiet shard's fill (a low id) that comes
        // last is first, and paging from the top reaches every fill once.
        let quiet = ExecReport { ts: UnixNanos(9), ..on(1, fill(2, 3, 1, 0, 5)) };
        let busy = ExecReport { ts: UnixNanos(8), ..on(0, fill(1, 40, 1, 0, 5)) };
        let later = OrderStore::new([AccountId(1)]);
        later.set_shards(2);
        for r in reports.iter().chain([&busy, &quiet]) {
            let _ = later.apply(r);
        }
        let ids = |list: Vec<FillView>| list.iter().map(|f| f.id).collect::<Vec<_>>();
        assert_eq!(ids(later.fills(AccountId(1), None, None, 2)), [7, 80], "by time");
        assert_eq!(ids(later.fills(AccountId(1), Some(80), None, 10)), [5, 4], "the rest");
        // A cursor no longer kept (or never given) was the oldest: nothing comes after it.
        assert!(later.fills(AccountId(1), Some(1_000_000), None, 10).is_empty());
        let _ = store.apply(&reports[3]);
        assert_eq!(store.fills(AccountId(1), None, None, usize::MAX), fills);

        // The history keeps each fill's own sequence: a restart rebuilds the same ids.
        let restarted = OrderStore::new([AccountId(1)]);
        restarted.set_shards(2);
        restarted.load(&store.dump());
        assert_eq!(content(&restarted), content(&store));
        for r in &reports {
            let _ = restarted.apply(r);
        }
        assert_eq!(content(&restarted), content(&store), "a replay recognises both fills");

        // One shard (the default): the id is the report's sequence.
        assert_eq!(fill_id(&reports[2], 1), 2);
    }
}
