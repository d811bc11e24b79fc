//! How engine events reach everything the gateway derives from them.
//!
//! Every consumer has one shape, [`EventConsumer`]: the market-data publisher
//! ([`crate::fanout::hub::MarketData`]), the users' order and account projection
//! ([`crate::orders::OrderProjection`]) and the alert evaluator
//! ([`crate::alerts::AlertEvaluator`]). Each is driven the same way, by a [`Pump`]: a
//! thread that reads every shard's events from an [`EventSource`] in order, hands each
//! read to its consumers in turn, and closes every pass with [`EventConsumer::on_pass`].
//!
//! ```text
//! engine shard rings ─▶ RingSource ─▶ Pump "fanout-hub" ─▶ OrderProjection, MarketData
//!                    └▶ RingSource ─▶ Pump "alerts"     ─▶ AlertEvaluator
//! ```
//!
//! A source is the engine's rings in one process; a broker subscription is another
//! source, and a broker publisher another consumer, without touching the ones here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tickgate_engine::runtime::EngineHandle;
use tickgate_engine::{Event, ReadOutcome, RingReader};
use tickgate_feed::Worker;

/// One read of one shard's events, in the engine's order.
#[derive(Debug)]
pub struct Batch<'a> {
    /// The shard the events come from.
    pub shard: usize,
    /// The events, oldest first.
    pub events: &'a [Event],
    /// The read reached the source's head: every command read so far has all its events
    /// in this or an earlier batch (the engine publishes a command's events together).
    pub caught_up: bool,
    /// The source's position after this read (one past the last event, per shard).
    pub position: u64,
}

/// Something that derives state from engine events.
///
/// A pump calls [`EventConsumer::on_events`] with each read of each shard, in order, then
/// [`EventConsumer::on_pass`] once per pass over all shards. Consumers of one pump run on
/// its thread one after the other, so none of them may block.
pub trait EventConsumer: Send {
    /// The next events of `batch.shard`.
    fn on_events(&mut self, batch: &Batch<'_>);
    /// `missed` events of `shard` were lost before this consumer's pump read them (it fell
    /// a whole ring behind): what was derived from them must be rebuilt or flagged.
    fn on_missed(&mut self, shard: usize, missed: u64);
    /// The end of a pass: flush, publish, answer.
    fn on_pass(&mut self) {}
}

/// Where a pump reads events.
pub trait EventSource: Send {
    /// Shards, numbered from 0.
    fn shards(&self) -> usize;
    /// Appends up to `max` of `shard`'s next events to `out`.
    fn read(&mut self, shard: usize, out: &mut Vec<Event>, max: usize) -> ReadOutcome;
    /// The position after the last event read from `shard`.
    fn position(&self, shard: usize) -> u64;
}

/// The engine's event rings, read from the moment the source is made.
#[derive(Debug)]
pub struct RingSource {
    readers: Vec<RingReader>,
}

impl RingSource {
    /// A reader on every shard of `engine`, starting at each ring's head.
    pub fn new(engine: &EngineHandle) -> Self {
        RingSource { readers: (0..engine.shards()).filter_map(|s| engine.reader(s)).collect() }
    }
}

impl EventSource for RingSource {
    fn shards(&self) -> usize {
        self.readers.len()
    }

    fn read(&mut self, shard: usize, out: &mut Vec<Event>, max: usize) -> ReadOutcome {
        match self.readers.get_mut(shard) {
            Some(reader) => reader.read(out, max),
            None => ReadOutcome::default(),
        }
    }

    fn position(&self, shard: usize) -> u64 {
        self.readers.get(shard).map_or(0, RingReader::cursor)
    }
}

/// Wakes a pump's thread when events are published (the engine's publish hook calls it).
#[derive(Clone, Debug, Default)]
pub struct Wake(Arc<OnceLock<Thread>>);

impl Wake {
    /// Unparks the pump's thread (cheap when it is running; nothing before it started).
    pub fn wake(&self) {
        if let Some(thread) = self.0.get() {
            thread.unpark();
        }
    }
}

/// How a pump spaces its passes.
pub struct Pacing {
    /// Longest wait for new events when a pass read none (a [`Wake`] ends it sooner).
    pub idle: Duration,
    /// Shortest pass when events keep coming: consumers that batch per pass (one chunk
    /// per channel and pass) get fewer, larger batches from a longer one. Asked anew
    /// before each pause.
    pub pass: Box<dyn Fn() -> Duration + Send>,
}

impl std::fmt::Debug for Pacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacing").field("idle", &self.idle).finish_non_exhaustive()
    }
}

/// Events one pass takes from one shard at most: a pump far behind still ends its passes
/// (and so answers and publishes) regularly.
pub const PUMP_READ_MAX: usize = 16_384;

/// A thread feeding consumers from a source. Stops when dropped or on [`Pump::stop`].
#[derive(Debug)]
pub struct Pump {
    worker: Worker,
}

impl Pump {
    /// Starts thread `name`: `consumers` see every event of `source` from now on.
    pub fn start(
        name: &str,
        source: impl EventSource + 'static,
        consumers: Vec<Box<dyn EventConsumer>>,
        pacing: Pacing,
        wake: &Wake,
    ) -> Pump {
        let mut run = Run { source, consumers, pacing, events: Vec::with_capacity(PUMP_READ_MAX) };
        let worker = Worker::spawn(name, move |stop| run.run(stop));
        if let Some(thread) = worker.thread() {
            let _ = wake.0.set(thread.clone());
        }
        Pump { worker }
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.worker.stop();
    }
}

struct Run<S> {
    source: S,
    consumers: Vec<Box<dyn EventConsumer>>,
    pacing: Pacing,
    events: Vec<Event>,
}

/// What one pass read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pass {
    read: usize,
    /// Some shard had more than one pass takes.
    behind: bool,
}

impl<S: EventSource> Run<S> {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            let started = Instant::now();
            let pass = self.pass();
            if pass.read == 0 {
                std::thread::park_timeout(self.pacing.idle);
            } else if pass.behind {
                // Still behind the source: no pause until caught up.
            } else if let Some(rest) = (self.pacing.pass)().checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }

    /// Reads every shard once and feeds the consumers.
    fn pass(&mut self) -> Pass {
        let mut pass = Pass::default();
        for shard in 0..self.source.shards() {
            self.events.clear();
            let outcome = self.source.read(shard, &mut self.events, PUMP_READ_MAX);
            pass.read += outcome.read;
            pass.behind |= outcome.read == PUMP_READ_MAX;
            if outcome.missed > 0 {
                for consumer in &mut self.consumers {
                    consumer.on_missed(shard, outcome.missed);
                }
            }
            let batch = Batch {
                shard,
                events: &self.events,
                caught_up: outcome.read < PUMP_READ_MAX,
                position: self.source.position(shard),
            };
            for consumer in &mut self.consumers {
                consumer.on_events(&batch);
            }
        }
        for consumer in &mut self.consumers {
            consumer.on_pass();
        }
        pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tickgate_engine::{InstrumentId, Price, Qty, Side, Trade, UnixNanos};

    /// A scripted source: per shard, the reads to return in turn.
    struct Script {
        reads: Vec<Vec<(Vec<Event>, u64)>>,
        positions: Vec<u64>,
    }

    impl EventSource for Script {
        fn shards(&self) -> usize {
            self.reads.len()
        }
        fn read(&mut self, shard: usize, out: &mut Vec<Event>, _max: usize) -> ReadOutcome {
            if self.reads[shard].is_empty() {
                return ReadOutcome::default();
            }
            let (events, missed) = self.reads[shard].remove(0);
            self.positions[shard] += missed + events.len() as u64;
            out.extend_from_slice(&events);
            ReadOutcome { read: events.len(), missed }
        }
        fn position(&self, shard: usize) -> u64 {
            self.positions[shard]
        }
    }

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl EventConsumer for (String, Log) {
        fn on_events(&mut self, b: &Batch<'_>) {
            let line =
                format!("{} events {} {} at {}", self.0, b.shard, b.events.len(), b.position);
            self.1 .0.lock().unwrap().push(line);
        }
        fn on_missed(&mut self, shard: usize, missed: u64) {
            self.1 .0.lock().unwrap().push(format!("{} missed {shard} {missed}", self.0));
        }
        fn on_pass(&mut self) {
            self.1 .0.lock().unwrap().push(format!("{} pass", self.0));
        }
    }

    fn trade(ts: u64) -> Event {
        Event::Trade(Trade {
            instrument: InstrumentId(0),
            seq: tickgate_engine::Seq(ts),
            price: Price(100),
            qty: Qty(1),
            taker_side: Side::Buy,
            maker_order: tickgate_engine::OrderId(1),
            taker_order: tickgate_engine::OrderId(2),
            ts: UnixNanos(ts),
        })
    }

    #[test]
    fn consumers_see_each_read_in_order_then_the_pass_end() {
        let log = Log::default();
        let source = Script {
            reads: vec![vec![(vec![trade(1), trade(2)], 0)], vec![(vec![trade(3)], 5)]],
            positions: vec![0, 0],
        };
        let consumers: Vec<Box<dyn EventConsumer>> = vec![
            Box::new(("a".to_string(), log.clone())),
            Box::new(("b".to_string(), log.clone())),
        ];
        let pacing = Pacing { idle: Duration::from_millis(1), pass: Box::new(|| Duration::ZERO) };
        let mut run = Run { source, consumers, pacing, events: Vec::new() };
        assert_eq!(run.pass(), Pass { read: 3, behind: false });
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "a events 0 2 at 2",
                "b events 0 2 at 2",
                "a missed 1 5",
                "b missed 1 5",
                "a events 1 1 at 6",
                "b events 1 1 at 6",
                "a pass",
                "b pass",
            ]
        );
    }

    #[test]
    fn a_started_pump_stops_when_asked() {
        let log = Log::default();
        let source = Script { reads: vec![vec![(vec![trade(1)], 0)]], positions: vec![0] };
        let wake = Wake::default();
        let pacing = Pacing { idle: Duration::from_secs(10), pass: Box::new(|| Duration::ZERO) };
        let pump = Pump::start(
            "pump-test",
            source,
            vec![Box::new(("a".to_string(), log.clone()))],
            pacing,
            &wake,
        );
        while !log.0.lock().unwrap().iter().any(|l| l == "a events 0 1 at 1") {
            std::thread::yield_now();
        }
        wake.wake();
        // Parked for up to 10 s: stopping unparks it.
        pump.stop();
    }
}
