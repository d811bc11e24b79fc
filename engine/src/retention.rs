//! Retention watermarks: how far each consumer that keeps durable state of its own (a
//! user's order history, say) has stored what it derives from a shard's events.
//!
//! Snapshots never wait for such consumers. Instead, each one advances its [`Watermark`]
//! (per shard, the ingest timestamp of the last command whose events it has stored:
//! timestamps increase strictly along a shard's journal, so one names a journal position),
//! and the shard's durable files follow the slowest of them:
//!
//! - pruning keeps the newest snapshot taken at or before the [`Retention::floor`] and the
//!   journal from there, besides the two newest snapshots it always keeps;
//! - recovery starts from that snapshot, so the replay hands every event past the floor
//!   to the consumers again (they skip what they already have).
//!
//! A consumer that falls behind therefore costs disk and replay time, never the engine's
//! progress, and never an event lost to its state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::types::UnixNanos;

/// The watermarks of every durable consumer, per shard.
#[derive(Debug)]
pub struct Retention {
    shards: usize,
    consumers: Mutex<Vec<Arc<[AtomicU64]>>>,
}

/// One consumer's progress: per shard, the timestamp of the last command whose events it
/// has stored. Only moves forward.
#[derive(Clone, Debug)]
pub struct Watermark {
    marks: Arc<[AtomicU64]>,
}

impl Retention {
    /// Watermarks over `shards` shards, with no consumer yet.
    pub fn new(shards: usize) -> Self {
        Retention { shards, consumers: Mutex::new(Vec::new()) }
    }

    /// Adds a consumer that has stored, per shard, everything up to `stored` (as it found
    /// on disk at start-up; a shard missing from it: nothing stored).
    pub fn register(&self, stored: &[u64]) -> Watermark {
        let marks: Arc<[AtomicU64]> =
            (0..self.shards).map(|s| AtomicU64::new(stored.get(s).copied().unwrap_or(0))).collect();
        self.consumers.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&marks));
        Watermark { marks }
    }

    /// The slowest consumer's mark on `shard`: events of commands after it must still be
    /// replayable. `None` when no consumer is registered (nothing needs keeping).
    pub fn floor(&self, shard: usize) -> Option<u64> {
        let consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.iter().filter_map(|m| m.get(shard)).map(|m| m.load(Ordering::Acquire)).min()
    }
}

impl Watermark {
    /// Everything of `shard` up to the command stamped `ts` is stored. A lower `ts` than
    /// before is ignored.
    pub fn advance(&self, shard: usize, ts: UnixNanos) {
        if let Some(mark) = self.marks.get(shard) {
            mark.fetch_max(ts.0, Ordering::AcqRel);
        }
    }

    /// Sets the mark on `shard`, lower or higher: for a consumer that has just rebuilt its
    /// state from recovery (everything up to the recovered journal's end is stored, and
    /// nothing the journal lost is).
    pub fn set(&self, shard: usize, ts: UnixNanos) {
        if let Some(mark) = self.marks.get(shard) {
            mark.store(ts.0, Ordering::Release);
        }
    }

    /// The mark on `shard`.
    pub fn stored(&self, shard: usize) -> u64 {
        self.marks.get(shard).map_or(0, |m| m.load(Ordering::Acquire))
    }

    /// Every shard's mark, in shard order.
    pub fn all(&self) -> Vec<u64> {
        self.marks.iter().map(|m| m.load(Ordering::Acquire)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_slowest_consumer_and_marks_only_move_forward() {
        let retention = Retention::new(2);
        assert_eq!(retention.floor(0), None, "no consumer: nothing to keep");
        let history = retention.register(&[10, 20]);
        let other = retention.register(&[5]);
        assert_eq!((retention.floor(0), retention.floor(1)), (Some(5), Some(0)));
        other.advance(0, UnixNanos(30));
        other.advance(1, UnixNanos(40));
        assert_eq!((retention.floor(0), retention.floor(1)), (Some(10), Some(20)));
        history.advance(0, UnixNanos(50));
        history.advance(0, UnixNanos(7));
        assert_eq!(history.stored(0), 50, "a lower mark is ignored");
        assert_eq!(retention.floor(0), Some(30));
        assert_eq!(history.all(), vec![50, 20]);
        assert_eq!(retention.floor(2), None, "no such shard");
        history.advance(9, UnixNanos(1));
        history.set(0, UnixNanos(3));
        assert_eq!(retention.floor(0), Some(3), "a rebuilt consumer may move back");
    }
}
