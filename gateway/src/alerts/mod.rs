//! Per-user alerts for the SSE stream: price alerts users set over REST, their own fills,
//! and system notices, each kept in a bounded per-user history so a reconnecting client
//! gets exactly what it missed.
//!
//! - [`AlertBook`]: one instrument's price alerts, kept sorted by threshold so that a new
//!   price costs O(log n + fired): alerts that do not fire are never looked at.
//! - [`AlertHub`]: per-user histories, event ids, live notification of open streams, and
//!   the users' alert books.
//! - [`AlertEvaluator`]: the event consumer (on a pump of its own, so it never slows the
//!   market-data fan-out) that turns trades, BBO changes and fills into alerts.
//!
//! The monitored price of an instrument is its *last price*: the price of each trade, and
//! the mid of the best bid and offer on each BBO change (when both sides exist).

mod book;
mod evaluator;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::json;
use tickgate_engine::types::format_fixed;
use tickgate_engine::{AccountId, Instrument, SharedClock};
use tokio::sync::watch;

pub use book::{AlertBook, Condition, Fired, PriceAlert};
pub use evaluator::AlertEvaluator;

/// One event of a user's stream, framed once for every tab.
#[derive(Clone, Debug)]
pub struct StreamEvent {
    /// Per-user increasing id.
    pub id: u64,
    /// `id:`, `event:` and `data:` lines and the blank line, ready to send.
    pub wire: Bytes,
}

/// Frames an SSE event.
pub fn frame_event(id: u64, kind: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: {kind}\ndata: {data}\n\n"))
}

/// A bounded history: the events kept, and the newest id dropped from it.
#[derive(Debug)]
struct History {
    events: VecDeque<StreamEvent>,
    /// Every id up to this one is gone (evicted, or from before this process).
    evicted: u64,
}

/// One user's history and the signal that wakes their open streams.
#[derive(Debug)]
pub struct UserAlerts {
    history: Mutex<History>,
    /// The newest event id, for streams to wait on.
    latest: watch::Sender<u64>,
    /// Open streams of this user.
    pub streams: AtomicU64,
}

/// What a stream gets when it (re)connects.
#[derive(Debug)]
pub enum Replay {
    /// The events after the given id (possibly none), in order.
    Events(Vec<StreamEvent>),
    /// The id is older than the history (or unknown): the client must refetch its state.
    /// Carries the newest id, for the `reset` event.
    Reset(u64),
}

impl UserAlerts {
    /// Events with ids above `after`, appended to `out`; `false` if `after` is older than
    /// the history (events were dropped in between).
    pub fn since(&self, after: u64, out: &mut Vec<StreamEvent>) -> bool {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        // Ids are increasing but not contiguous per user (one counter for all users): what
        // tells whether something after `after` is gone is the newest evicted id.
        if after < history.evicted {
            return false;
        }
        let start = history.events.partition_point(|e| e.id <= after);
        out.extend(history.events.iter().skip(start).cloned());
        true
    }

    /// What a (re)connecting stream gets for `last_event_id`.
    pub fn replay(&self, last_event_id: Option<u64>) -> Replay {
        let latest = *self.latest.borrow();
        let Some(after) = last_event_id else { return Replay::Events(Vec::new()) };
        if after > latest {
            // Not an id this server gave (e.g. from before a restart).
            return Replay::Reset(latest);
        }
        let mut out = Vec::new();
        if self.since(after, &mut out) {
            Replay::Events(out)
        } else {
            Replay::Reset(latest)
        }
    }

    /// A receiver that changes whenever an event is added.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

/// Every user's alerts, histories and price alerts.
#[derive(Debug)]
pub struct AlertHub {
    pub(super) users: HashMap<AccountId, Arc<UserAlerts>>,
    next_event_id: AtomicU64,
    next_alert_id: AtomicU64,
    history_max: usize,
    books: Vec<Mutex<AlertBook>>,
    /// Alerts per user, for listing and deletion.
    alerts: Mutex<HashMap<AccountId, BTreeMap<u64, PriceAlert>>>,
    /// Open streams in total.
    pub streams: AtomicU64,
    /// Event ids and the time of alerts fired on creation.
    clock: SharedClock,
    /// Where fired alerts also go (the engine node hands them to every gateway node).
    relay: std::sync::OnceLock<Relay>,
}

/// What a relay is handed: `(account, kind, data)` of an alert that fired.
pub type RelayFn = dyn Fn(AccountId, &str, &serde_json::Value) + Send + Sync;

/// Sees every alert that fires.
pub struct Relay(pub Box<RelayFn>);

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

/// Price alerts one user may have.
pub const ALERTS_PER_USER_MAX: usize = 100;

/// Why an alert was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// Not a user account.
    UnknownUser,
    /// Over [`ALERTS_PER_USER_MAX`].
    TooMany,
}

impl AlertHub {
    /// Histories for these accounts, `history_max` events each, alert books for
    /// `instruments` instruments. Event ids start from the wall clock in microseconds, so
    /// they keep increasing across restarts and an id from a previous process is never
    /// mistaken for a current one.
    pub fn new(
        accounts: impl IntoIterator<Item = AccountId>,
        instruments: usize,
        history_max: usize,
        clock: SharedClock,
    ) -> Self {
        let first_id = clock.now().0 / 1_000;
        let users = accounts
            .into_iter()
            .map(|a| {
                let user = UserAlerts {
                    history: Mutex::new(History { events: VecDeque::new(), evicted: first_id - 1 }),
                    latest: watch::channel(first_id - 1).0,
                    streams: AtomicU64::new(0),
                };
                (a, Arc::new(user))
            })
            .collect();
        AlertHub {
            users,
            next_event_id: AtomicU64::new(first_id),
            next_alert_id: AtomicU64::new(1),
            history_max: history_max.max(1),
            books: (0..instruments).map(|_| Mutex::new(AlertBook::default())).collect(),
            alerts: Mutex::new(HashMap::new()),
            streams: AtomicU64::new(0),
            clock,
            relay: std::sync::OnceLock::new(),
        }
    }

    /// Hands every alert that fires from now on to `relay` too (set once).
    pub fn set_relay(&self, relay: Relay) {
        let _ = self.relay.set(relay);
    }

    /// Events each user's history keeps.
    pub fn history_max(&self) -> usize {
        self.history_max
    }

    /// A user's alerts.
    pub fn user(&self, account: AccountId) -> Option<&Arc<UserAlerts>> {
        self.users.get(&account)
    }

    /// Appends an event to `account`'s history and wakes its streams; returns its id.
    pub fn publish(&self, account: AccountId, kind: &str, data: &serde_json::Value) -> Option<u64> {
        let user = self.users.get(&account)?;
        let mut history = user.history.lock().unwrap_or_else(|e| e.into_inner());
        // Taken under the lock: ids increase along each history.
        let id = self.next_event_id.fetch_add(1, Ordering::Relaxed);
        history.events.push_back(StreamEvent { id, wire: frame_event(id, kind, data) });
        while history.events.len() > self.history_max {
            if let Some(old) = history.events.pop_front() {
                history.evicted = old.id;
            }
        }
        drop(history);
        user.latest.send_replace(id);
        Some(id)
    }

    /// A system notice to every user.
    pub fn publish_system(&self, data: &serde_json::Value) {
        for account in self.users.keys() {
            self.publish(*account, "system", data);
        }
    }

    /// Adds a price alert (firing it at once if its condition already holds).
    pub fn add_alert(
        &self,
        account: AccountId,
        instrument: &Instrument,
        condition: Condition,
        price: i64,
        repeat: bool,
    ) -> Result<PriceAlert, AddError> {
        if !self.users.contains_key(&account) {
            return Err(AddError::UnknownUser);
        }
        let book = self.books.get(instrument.id.0 as usize).ok_or(AddError::UnknownUser)?;
        let alert = {
            let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
            let mine = alerts.entry(account).or_default();
            if mine.len() >= ALERTS_PER_USER_MAX {
                return Err(AddError::TooMany);
            }
            let id = self.next_alert_id.fetch_add(1, Ordering::Relaxed);
            let alert =
                PriceAlert { id, account, instrument: instrument.id, condition, price, repeat };
            mine.insert(id, alert);
            alert
        };
        let fired = book.lock().unwrap_or_else(|e| e.into_inner()).insert(alert);
        if let Some(f) = fired {
            self.publish_fired(instrument, &[f], self.clock.now().0);
        }
        Ok(alert)
    }

    /// `account`'s alerts, by id.
    pub fn alerts(&self, account: AccountId) -> Vec<PriceAlert> {
        let alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        alerts.get(&account).map(|m| m.values().copied().collect()).unwrap_or_default()
    }

    /// Deletes one of `account`'s alerts; whether it existed.
    pub fn remove_alert(&self, account: AccountId, id: u64) -> bool {
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(alert) = alerts.get_mut(&account).and_then(|m| m.remove(&id)) else {
            return false;
        };
        if let Some(book) = self.books.get(alert.instrument.0 as usize) {
            book.lock().unwrap_or_else(|e| e.into_inner()).remove(&alert);
        }
        true
    }

    /// A new last price of `instrument`: fires what it crosses.
    pub(super) fn on_price(
        &self,
        instrument: &Instrument,
        price: i64,
        ts: u64,
        fired: &mut Vec<Fired>,
    ) {
        let Some(book) = self.books.get(instrument.id.0 as usize) else { return };
        fired.clear();
        {
            let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
            if book.is_empty() {
                book.last = Some(price);
                return;
            }
            book.on_price(price, fired);
        }
        if !fired.is_empty() {
            self.publish_fired(instrument, fired, ts);
        }
    }

    /// Publishes fired alerts to their owners, forgetting the one-shot ones.
    fn publish_fired(&self, instrument: &Instrument, fired: &[Fired], ts: u64) {
        let pp = instrument.spec.price_precision;
        for f in fired {
            let a = &f.alert;
            if !a.repeat {
                let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = alerts.get_mut(&a.account) {
                    m.remove(&a.id);
                }
            }
            let data = json!({
                "alert_id": a.id,
                "symbol": instrument.spec.symbol,
                "condition": a.condition.as_str(),
                "price": format_fixed(a.price, pp),
                "last_price": format_fixed(f.last, pp),
                "repeat": a.repeat,
                "ts": ts,
            });
            self.publish(a.account, "price", &data);
            if let Some(relay) = self.relay.get() {
                (relay.0)(a.account, "price", &data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_replays_after_an_id_or_asks_for_a_reset() {
        let hub =
            AlertHub::new([AccountId(1), AccountId(2)], 1, 3, tickgate_engine::WallClock::shared());
        let user = Arc::clone(hub.user(AccountId(1)).unwrap());
        let ids: Vec<u64> = (0..5)
            .map(|i| hub.publish(AccountId(1), "system", &json!({"n": i})).unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[1] > w[0]));
        let Replay::Events(e) = user.replay(Some(ids[3])) else { panic!("in history") };
        assert_eq!(e.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[4]]);
        let Replay::Events(e) = user.replay(Some(ids[1])) else { panic!("just in history") };
        assert_eq!(e.len(), 3);
        assert!(matches!(user.replay(Some(ids[0])), Replay::Reset(latest) if latest == ids[4]));
        assert!(matches!(user.replay(Some(ids[4] + 10)), Replay::Reset(_)));
        assert!(matches!(user.replay(None), Replay::Events(e) if e.is_empty()));
        // The other user saw nothing.
        let other = hub.user(AccountId(2)).unwrap();
        let start = *other.watch().borrow();
        assert!(matches!(other.replay(Some(start)), Replay::Events(e) if e.is_empty()));
        assert!(matches!(other.replay(Some(1)), Replay::Reset(_)), "an id from an older process");
        assert!(hub.publish(AccountId(9), "system", &json!({})).is_none());
    }
}
