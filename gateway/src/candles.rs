//! Candles (OHLCV) of every instrument at 1 s, 1 m, 5 m and 1 h, computed by the hub from
//! the trades it publishes (bucketed by each trade's engine timestamp, so a replay gives
//! the same candles), the newest [`CANDLES_KEPT`] per series.
//!
//! Restarts: with a data directory the store is written to `<data-dir>/candles.json`
//! every [`SAVE_EVERY`] and at shutdown (atomically), with the last trade sequence it
//! includes per instrument; at start it is loaded, then the journal's replayed trades are
//! applied on top, skipping those already counted. What a crash can lose: trades between
//! the last save and the newest snapshot (the replay starts there), at most
//! [`SAVE_EVERY`] of them, and only if a snapshot was taken in that window.
//!
//! The store also keeps each instrument's tape, its newest [`TAPE_KEPT`] trades, the same
//! way: a restart's trades channels start with it (see the hub), where the journal's replay
//! alone would bring back only the trades since the engine's last snapshot.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tickgate_engine::Trade;

/// Candle intervals: name and length in nanoseconds.
pub const INTERVALS: [(&str, u64); 4] = [
    ("1s", 1_000_000_000),
    ("1m", 60_000_000_000),
    ("5m", 300_000_000_000),
    ("1h", 3_600_000_000_000),
];
/// Candles kept per instrument and interval.
pub const CANDLES_KEPT: usize = 1_000;
/// How often the store is written to disk.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);
/// Trades kept per instrument on the tape.
pub const TAPE_KEPT: usize = 1_000;

/// A trade as the tape keeps it (plain numbers: the file's format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapeTrade {
    /// Trades channel sequence.
    pub seq: u64,
    /// Engine timestamp.
    pub ts: u64,
    /// Price, raw fixed-point units.
    pub price: i64,
    /// Quantity, raw fixed-point units.
    pub qty: i64,
    /// The taker bought.
    pub taker_buys: bool,
    /// Resting order.
    pub maker_order: u64,
    /// Incoming order.
    pub taker_order: u64,
}

impl From<&Trade> for TapeTrade {
    fn from(t: &Trade) -> Self {
        TapeTrade {
            seq: t.seq.0,
            ts: t.ts.0,
            price: t.price.0,
            qty: t.qty.0,
            taker_buys: t.taker_side == tickgate_engine::Side::Buy,
            maker_order: t.maker_order.0,
            taker_order: t.taker_order.0,
        }
    }
}

/// One candle: `[start, end)` in engine nanoseconds; prices and volume in the instrument's
/// raw fixed-point units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candle {
    /// Start of the interval, ns since the epoch.
    pub start: u64,
    /// First trade's price.
    pub open: i64,
    /// Highest price.
    pub high: i64,
    /// Lowest price.
    pub low: i64,
    /// Last trade's price.
    pub close: i64,
    /// Quantity traded.
    pub volume: i64,
    /// Number of trades.
    pub trades: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// Per instrument, per interval (as [`INTERVALS`]), oldest first.
    series: Vec<Vec<VecDeque<Candle>>>,
    /// Per instrument, the sequence of the last trade counted.
    last_seq: Vec<u64>,
    /// Per instrument, the newest trades, oldest first (absent from files of earlier
    /// builds).
    #[serde(default)]
    tape: Vec<VecDeque<TapeTrade>>,
}

/// Every instrument's candles.
pub struct Candles {
    state: Mutex<State>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Candles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candles").field("file", &self.file).finish_non_exhaustive()
    }
}

impl Candles {
    /// An empty store for `instruments`, kept in `dir` if given (loaded now if there).
    pub fn new(instruments: usize, dir: Option<&Path>) -> std::io::Result<Candles> {
        let file = dir.map(|d| d.join("candles.json"));
        let mut state = match &file {
            Some(f) if f.exists() => match serde_json::from_slice(&std::fs::read(f)?) {
                Ok(state) => state,
                // Derived data: never a reason not to start. The journal's replay refills
                // what it can.
                Err(e) => {
                    tracing::warn!(
                        "candles file {} unreadable ({e}): starting without it",
                        f.display()
                    );
                    State::default()
                }
            },
            _ => State::default(),
        };
        state.series.resize_with(instruments, || vec![VecDeque::new(); INTERVALS.len()]);
        state.last_seq.resize(instruments, 0);
        state.tape.resize_with(instruments, VecDeque::new);
        Ok(Candles { state: Mutex::new(state), file })
    }

    /// Counts `trades` (in sequence order per instrument; ones already counted are skipped).
    pub fn apply(&self, trades: &[Trade]) {
        if trades.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { series, last_seq, tape } = &mut *state;
        for t in trades {
            let i = t.instrument.0 as usize;
            let (Some(series), Some(last), Some(tape)) =
                (series.get_mut(i), last_seq.get_mut(i), tape.get_mut(i))
            else {
                continue;
            };
            if t.seq.0 <= *last {
                continue;
            }
            *last = t.seq.0;
            if tape.len() == TAPE_KEPT {
                tape.pop_front();
            }
            tape.push_back(TapeTrade::from(t));
            for (candles, (_, length)) in series.iter_mut().zip(INTERVALS) {
                add(candles, t, length);
            }
        }
    }

    /// The newest `limit` candles of `instrument` at interval `interval` (an index into
    /// [`INTERVALS`]), oldest first.
    pub fn candles(&self, instrument: usize, interval: usize, limit: usize) -> Vec<Candle> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(candles) = state.series.get(instrument).and_then(|s| s.get(interval)) else {
            return Vec::new();
        };
        candles.iter().skip(candles.len().saturating_sub(limit)).copied().collect()
    }

    /// The candles of `instrument` at `interval` that start at or after `start`, oldest
    /// first (what a pass of trades from `start` on changed).
    pub fn since(&self, instrument: usize, interval: usize, start: u64) -> Vec<Candle> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(candles) = state.series.get(instrument).and_then(|s| s.get(interval)) else {
            return Vec::new();
        };
        let newer = candles.iter().rev().take_while(|c| c.start >= start).count();
        candles.iter().skip(candles.len() - newer).copied().collect()
    }

    /// The newest trades of `instrument` that follow one another without a gap up to its
    /// newest (oldest first): a tape saved before the engine's last snapshot and the
    /// journal's trades after it may not join, and a tape with a hole is no tape.
    pub fn tape(&self, instrument: usize) -> Vec<TapeTrade> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tape) = state.tape.get(instrument) else { return Vec::new() };
        let mut from = tape.len().saturating_sub(1);
        while from > 0 && tape[from - 1].seq + 1 == tape[from].seq {
            from -= 1;
        }
        tape.iter().skip(from).copied().collect()
    }

    /// The whole store as JSON (what [`Candles::save`] writes).
    pub fn export(&self) -> Vec<u8> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_vec(&*state).unwrap_or_default()
    }

    /// Replaces the store with another node's ([`Candles::export`]); trades it already
    /// counted are then skipped by [`Candles::apply`].
    pub fn import(&self, bytes: &[u8]) -> Result<(), serde_json::Error> {
        let mut imported: State = serde_json::from_slice(bytes)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let instruments = state.series.len();
        imported.series.resize_with(instruments, || vec![VecDeque::new(); INTERVALS.len()]);
        imported.last_seq.resize(instruments, 0);
        imported.tape.resize_with(instruments, VecDeque::new);
        *state = imported;
        Ok(())
    }

    /// Writes the store to its file (atomically); nothing without a data directory.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let bytes = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec(&*state).map_err(std::io::Error::other)?
        };
        crate::atomic_file::replace(file, &bytes)
    }
}

/// Adds one trade to a series of candles of `length` ns.
fn add(candles: &mut VecDeque<Candle>, t: &Trade, length: u64) {
    let start = t.ts.0 - t.ts.0 % length;
    let (price, qty) = (t.price.0, t.qty.0);
    match candles.back_mut() {
        Some(c) if c.start == start => {
            c.high = c.high.max(price);
            c.low = c.low.min(price);
            c.close = price;
            c.volume = c.volume.saturating_add(qty);
            c.trades += 1;
        }
        // Engine timestamps never go back: a trade is in the newest candle or a new one.
        _ => {
            candles.push_back(Candle {
                start,
                open: price,
                high: price,
                low: price,
                close: price,
                volume: qty,
                trades: 1,
            });
            if candles.len() > CANDLES_KEPT {
                candles.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::{InstrumentId, OrderId, Price, Qty, Seq, Side, UnixNanos};

    fn trade(seq: u64, secs: f64, price: i64, qty: i64) -> Trade {
        Trade {
            instrument: InstrumentId(0),
            seq: Seq(seq),
            ts: UnixNanos((secs * 1e9) as u64),
            price: Price(price),
            qty: Qty(qty),
            taker_side: Side::Buy,
            maker_order: OrderId(1),
            taker_order: OrderId(2),
        }
    }

    #[test]
    fn trades_make_candles_per_interval_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("tickgate-candles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Candles::new(1, Some(&dir)).expect("new");
        let trades = [
            trade(1, 0.2, 100, 1),
            trade(2, 0.7, 105, 2),
            trade(3, 1.1, 99, 3),
            trade(4, 61.0, 101, 1),
        ];
        store.apply(&trades[..3]);
        store.save().expect("save");
        store.apply(&trades[3..]);
        let seconds = store.candles(0, 0, 10);
        assert_eq!(seconds.len(), 3);
        assert_eq!(
            seconds[0],
            Candle { start: 0, open: 100, high: 105, low: 100, close: 105, volume: 3, trades: 2 }
        );
        let minutes = store.candles(0, 1, 10);
        assert_eq!(minutes.len(), 2);
        assert_eq!(
            (minutes[0].open, minutes[0].high, minutes[0].low, minutes[0].close),
            (100, 105, 99, 99)
        );
        assert_eq!(store.candles(0, 1, 1), minutes[1..].to_vec(), "the newest, oldest first");

        // A restart: the saved store, then the journal's replay of every trade: the ones
        // already counted are skipped, the rest added.
        let restarted = Candles::new(1, Some(&dir)).expect("load");
        restarted.apply(&trades);
        assert_eq!(restarted.candles(0, 0, 10), store.candles(0, 0, 10));
        assert_eq!(restarted.candles(0, 3, 10), store.candles(0, 3, 10));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// The tape keeps the newest trades, survives a save and a load, and is given only
    /// from its newest back to the first hole (a saved tape and the journal's later trades
    /// that do not join).
    #[test]
    fn the_tape_is_kept_saved_and_given_without_holes() {
        let dir = std::env::temp_dir().join(format!("tickgate-tape-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Candles::new(1, Some(&dir)).expect("store");
        let trades: Vec<Trade> =
            (1..=TAPE_KEPT as u64 + 5).map(|n| trade(n, 1.0, 100, 1)).collect();
        store.apply(&trades);
        let tape = store.tape(0);
        assert_eq!(tape.len(), TAPE_KEPT, "the newest only");
        assert_eq!(tape.last().map(|t| t.seq), Some(TAPE_KEPT as u64 + 5));
        store.save().expect("saved");
        let loaded = Candles::new(1, Some(&dir)).expect("loaded");
        assert_eq!(loaded.tape(0), tape);
        // Trades past a hole: the tape is what follows the hole.
        let later: Vec<Trade> = (2_000..2_003).map(|n| trade(n, 2.0, 100, 1)).collect();
        loaded.apply(&later);
        assert_eq!(loaded.tape(0).iter().map(|t| t.seq).collect::<Vec<_>>(), [2_000, 2_001, 2_002]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
