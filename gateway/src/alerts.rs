//! Per-user alerts for the SSE stream: price alerts users set over REST, their own fills,
//! and system notices, each kept in a bounded per-user history so a reconnecting client
//! gets exactly what it missed.
//!
//! - [`AlertBook`]: one instrument's price alerts, kept sorted by threshold so that a new
//!   price costs O(log n + fired): alerts that do not fire are never looked at.
//! - [`AlertHub`]: per-user histories, event ids, live notification of open streams, and
//!   the users' alert books.
//! - [`AlertWorker`]: a thread that reads the engine's event rings (its own readers, so it
//!   never slows the market-data fan-out) and turns trades, BBO changes and fills into
//!   alerts.
//!
//! The monitored price of an instrument is its *last price*: the price of each trade, and
//! the mid of the best bid and offer on each BBO change (when both sides exist).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tickgate_engine::runtime::{now_nanos, EngineHandle};
use tickgate_engine::types::format_fixed;
use tickgate_engine::{AccountId, Event, ExecKind, Instrument, InstrumentId, RingReader};
use tokio::sync::watch;

/// When a price alert fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The price is at or above the threshold.
    Above,
    /// The price is at or below the threshold.
    Below,
    /// The price moves from one side of the threshold to the other (or onto it).
    Crosses,
}

impl Condition {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Above => "above",
            Condition::Below => "below",
            Condition::Crosses => "crosses",
        }
    }

    /// Inverse of [`Condition::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "above" => Some(Condition::Above),
            "below" => Some(Condition::Below),
            "crosses" => Some(Condition::Crosses),
            _ => None,
        }
    }
}

/// A price alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceAlert {
    /// Id (unique in the process).
    pub id: u64,
    /// Owner.
    pub account: AccountId,
    /// Market.
    pub instrument: InstrumentId,
    /// Condition.
    pub condition: Condition,
    /// Threshold (raw fixed-point price).
    pub price: i64,
    /// Fires again each time the condition becomes true again (otherwise: once, then gone).
    pub repeat: bool,
}

/// One fired alert: the alert and the price that fired it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fired {
    /// The alert (as it was when it fired).
    pub alert: PriceAlert,
    /// The last price that fired it.
    pub last: i64,
}

/// One instrument's price alerts.
///
/// `above` alerts that are armed wait in `above` (keyed by threshold): a price `p` fires
/// every key `<= p`. A repeating one then waits in `above_fired` until the price drops
/// below its threshold again (every key `> p` re-arms). `below` is the mirror image.
/// `crosses` alerts fire when a move from `a` to `b` passes their threshold: keys in
/// `(a, b]` going up, `[b, a)` going down. Each step is a range query on a sorted map.
#[derive(Debug, Default)]
pub struct AlertBook {
    last: Option<i64>,
    above: BTreeMap<(i64, u64), PriceAlert>,
    above_fired: BTreeMap<(i64, u64), PriceAlert>,
    below: BTreeMap<(i64, u64), PriceAlert>,
    below_fired: BTreeMap<(i64, u64), PriceAlert>,
    crosses: BTreeMap<(i64, u64), PriceAlert>,
}

impl AlertBook {
    /// Arms an alert. An `above` or `below` alert whose condition already holds at the
    /// last price fires at once (returned): a one-shot one is then not kept, a repeating
    /// one waits to re-arm.
    pub fn insert(&mut self, alert: PriceAlert) -> Option<Fired> {
        let key = (alert.price, alert.id);
        let holds = |last: i64| match alert.condition {
            Condition::Above => last >= alert.price,
            Condition::Below => last <= alert.price,
            Condition::Crosses => false,
        };
        if let Some(last) = self.last.filter(|&l| holds(l)) {
            if alert.repeat {
                match alert.condition {
                    Condition::Above => self.above_fired.insert(key, alert),
                    _ => self.below_fired.insert(key, alert),
                };
            }
            return Some(Fired { alert, last });
        }
        match alert.condition {
            Condition::Above => self.above.insert(key, alert),
            Condition::Below => self.below.insert(key, alert),
            Condition::Crosses => self.crosses.insert(key, alert),
        };
        None
    }

    /// Removes an alert; whether it was there.
    pub fn remove(&mut self, alert: &PriceAlert) -> bool {
        let key = (alert.price, alert.id);
        [
            &mut self.above,
            &mut self.above_fired,
            &mut self.below,
            &mut self.below_fired,
            &mut self.crosses,
        ]
        .into_iter()
        .any(|m| m.remove(&key).is_some())
    }

    /// Number of alerts (armed or waiting to re-arm).
    pub fn len(&self) -> usize {
        self.above.len()
            + self.above_fired.len()
            + self.below.len()
            + self.below_fired.len()
            + self.crosses.len()
    }

    /// Whether there are no alerts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last price seen.
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// A new last price: appends every alert it fires to `out`. One-shot alerts that fire
    /// are removed (the caller forgets them too).
    pub fn on_price(&mut self, price: i64, out: &mut Vec<Fired>) {
        let previous = self.last.replace(price);
        if previous == Some(price) {
            return;
        }
        // Re-arm repeating alerts whose condition stopped holding.
        move_range(&mut self.above_fired, &mut self.above, (price + 1, 0).., |_| true);
        move_range(&mut self.below_fired, &mut self.below, ..(price, 0), |_| true);
        // Fire.
        let fired_above: Vec<_> = self.above.range(..=(price, u64::MAX)).map(|(k, _)| *k).collect();
        for key in fired_above {
            if let Some(alert) = self.above.remove(&key) {
                out.push(Fired { alert, last: price });
                if alert.repeat {
                    self.above_fired.insert(key, alert);
                }
            }
        }
        let fired_below: Vec<_> = self.below.range((price, 0)..).map(|(k, _)| *k).collect();
        for key in fired_below {
            if let Some(alert) = self.below.remove(&key) {
                out.push(Fired { alert, last: price });
                if alert.repeat {
                    self.below_fired.insert(key, alert);
                }
            }
        }
        if let Some(previous) = previous {
            let crossed: Vec<_> = if price > previous {
                self.crosses.range((previous + 1, 0)..=(price, u64::MAX)).map(|(k, _)| *k).collect()
            } else {
                self.crosses.range((price, 0)..(previous, 0)).map(|(k, _)| *k).collect()
            };
            for key in crossed {
                let Some(alert) = self.crosses.get(&key).copied() else { continue };
                out.push(Fired { alert, last: price });
                if !alert.repeat {
                    self.crosses.remove(&key);
                }
            }
        }
    }
}

fn move_range<R: std::ops::RangeBounds<(i64, u64)>>(
    from: &mut BTreeMap<(i64, u64), PriceAlert>,
    to: &mut BTreeMap<(i64, u64), PriceAlert>,
    range: R,
    keep: impl Fn(&PriceAlert) -> bool,
) {
    let keys: Vec<_> = from.range(range).map(|(k, _)| *k).collect();
    for key in keys {
        if let Some(alert) = from.remove(&key) {
            if keep(&alert) {
                to.insert(key, alert);
            }
        }
    }
}

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
    users: HashMap<AccountId, Arc<UserAlerts>>,
    next_event_id: AtomicU64,
    next_alert_id: AtomicU64,
    history_max: usize,
    books: Vec<Mutex<AlertBook>>,
    /// Alerts per user, for listing and deletion.
    alerts: Mutex<HashMap<AccountId, BTreeMap<u64, PriceAlert>>>,
    /// Open streams in total.
    pub streams: AtomicU64,
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
    ) -> Self {
        let first_id = now_nanos().0 / 1_000;
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
        }
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
            self.publish_fired(instrument, &[f], now_nanos().0);
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
    fn on_price(&self, instrument: &Instrument, price: i64, ts: u64, fired: &mut Vec<Fired>) {
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
        }
    }
}

/// The thread that evaluates alerts from the engine's events.
#[derive(Debug)]
pub struct AlertWorker {
    worker: tickgate_feed::Worker,
}

/// How long the worker sleeps when there is nothing to read.
const IDLE_SLEEP: Duration = Duration::from_micros(500);

impl AlertWorker {
    /// Starts reading every shard's ring from now on.
    pub fn start(engine: EngineHandle, hub: Arc<AlertHub>) -> AlertWorker {
        let readers: Vec<RingReader> =
            (0..engine.shards()).filter_map(|s| engine.reader(s)).collect();
        let worker =
            tickgate_feed::Worker::spawn("alerts", move |stop| run(&engine, &hub, readers, stop));
        AlertWorker { worker }
    }

    /// Stops the thread (dropping the worker does the same).
    pub fn stop(self) {
        self.worker.stop();
    }
}

fn run(engine: &EngineHandle, hub: &AlertHub, mut readers: Vec<RingReader>, stop: &AtomicBool) {
    let mut events = Vec::with_capacity(4096);
    let mut fired = Vec::new();
    let instruments = engine.instruments();
    while !stop.load(Ordering::Acquire) {
        let mut read = 0;
        for reader in &mut readers {
            events.clear();
            let outcome = reader.read(&mut events, 4096);
            read += outcome.read;
            if outcome.missed > 0 {
                // Fills (and prices) were lost to this thread: never a silent gap.
                for account in hub.users.keys() {
                    hub.publish(
                        *account,
                        "reset",
                        &json!({"reason": "alerts_lagged", "missed_events": outcome.missed}),
                    );
                }
            }
            for event in &events {
                match event {
                    Event::Trade(t) => {
                        if let Some(i) = instruments.get(t.instrument.0 as usize) {
                            hub.on_price(i, t.price.0, t.ts.0, &mut fired);
                        }
                    }
                    Event::Bbo(b) if b.bid_qty.0 > 0 && b.ask_qty.0 > 0 => {
                        if let Some(i) = instruments.get(b.instrument.0 as usize) {
                            let mid = (b.bid_price.0 + b.ask_price.0) / 2;
                            hub.on_price(i, mid, b.ts.0, &mut fired);
                        }
                    }
                    Event::Exec(r)
                        if matches!(r.kind, ExecKind::PartiallyFilled | ExecKind::Filled)
                            && hub.users.contains_key(&r.account) =>
                    {
                        let Some(i) = instruments.get(r.instrument.0 as usize) else { continue };
                        let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
                        let data = json!({
                            "order_id": r.order_id.0,
                            "client_order_id": r.client_order_id,
                            "symbol": i.spec.symbol,
                            "side": r.side.as_str(),
                            "price": format_fixed(r.last_price.0, pp),
                            "qty": format_fixed(r.last_qty.0, qp),
                            "open_qty": format_fixed(r.leaves_qty.0, qp),
                            "status": r.kind.as_str(),
                            "report_seq": r.seq.0,
                            "ts": r.ts.0,
                        });
                        hub.publish(r.account, "fill", &data);
                    }
                    _ => {}
                }
            }
        }
        if read == 0 {
            std::thread::sleep(IDLE_SLEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: u64, condition: Condition, price: i64, repeat: bool) -> PriceAlert {
        PriceAlert {
            id,
            account: AccountId(1),
            instrument: InstrumentId(0),
            condition,
            price,
            repeat,
        }
    }

    fn fire(book: &mut AlertBook, price: i64) -> Vec<u64> {
        let mut out = Vec::new();
        book.on_price(price, &mut out);
        out.iter().map(|f| f.alert.id).collect()
    }

    #[test]
    fn above_and_below_fire_once_or_rearm() {
        let mut b = AlertBook::default();
        assert!(b.insert(alert(1, Condition::Above, 100, false)).is_none());
        assert!(b.insert(alert(2, Condition::Above, 105, true)).is_none());
        assert!(b.insert(alert(3, Condition::Below, 90, true)).is_none());
        assert_eq!(fire(&mut b, 95), Vec::<u64>::new());
        assert_eq!(fire(&mut b, 100), vec![1]);
        assert_eq!(fire(&mut b, 110), vec![2]);
        assert_eq!(fire(&mut b, 120), Vec::<u64>::new(), "repeating waits to re-arm");
        assert_eq!(fire(&mut b, 80), vec![3]);
        assert_eq!(fire(&mut b, 106), vec![2], "re-armed below its threshold, fires again");
        assert_eq!(fire(&mut b, 89), vec![3]);
        assert_eq!(b.len(), 2, "the one-shot alert is gone");
    }

    #[test]
    fn an_alert_already_true_fires_when_added() {
        let mut b = AlertBook::default();
        assert_eq!(fire(&mut b, 105), Vec::<u64>::new());
        let now = b.insert(alert(1, Condition::Above, 100, false)).expect("already above");
        assert_eq!((now.alert.id, now.last), (1, 105));
        assert!(b.is_empty(), "a one-shot alert that fired is not kept");
        assert!(b.insert(alert(2, Condition::Below, 110, true)).is_some());
        assert_eq!(fire(&mut b, 104), Vec::<u64>::new(), "waits to re-arm");
        assert_eq!(fire(&mut b, 111), Vec::<u64>::new());
        assert_eq!(fire(&mut b, 109), vec![2]);
        assert!(b.insert(alert(3, Condition::Above, 200, false)).is_none());
        assert!(b.insert(alert(4, Condition::Crosses, 109, false)).is_none());
    }

    #[test]
    fn crosses_fires_on_moves_through_the_threshold() {
        let mut b = AlertBook::default();
        assert!(b.insert(alert(1, Condition::Crosses, 100, true)).is_none());
        assert!(b.insert(alert(2, Condition::Crosses, 200, false)).is_none());
        assert_eq!(fire(&mut b, 50), Vec::<u64>::new(), "no previous price: nothing crossed");
        assert_eq!(fire(&mut b, 99), Vec::<u64>::new());
        assert_eq!(fire(&mut b, 100), vec![1], "touching counts");
        assert_eq!(fire(&mut b, 250), vec![2]);
        assert_eq!(fire(&mut b, 150), Vec::<u64>::new(), "one-shot is gone");
        assert_eq!(fire(&mut b, 99), vec![1]);
        assert!(b.remove(&alert(1, Condition::Crosses, 100, true)));
        assert_eq!(fire(&mut b, 300), Vec::<u64>::new());
        assert!(b.is_empty());
    }

    #[test]
    fn history_replays_after_an_id_or_asks_for_a_reset() {
        let hub = AlertHub::new([AccountId(1), AccountId(2)], 1, 3);
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
