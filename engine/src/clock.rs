//! Time, injected: the one place anything here reads the wall clock.
//!
//! The matching core never reads a clock: commands carry their ingest timestamp. That
//! timestamp comes from a [`Stamper`] (the journal stage's, or the shard thread's when
//! nothing is journaled) over a [`Clock`]: the [`WallClock`] in production, a
//! [`ManualClock`] in tests that need time to pass without sleeping (a token that expires,
//! a candle that closes). The gateway takes the same clock for everything it stamps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::types::UnixNanos;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Nanoseconds since the Unix epoch.
    fn now(&self) -> UnixNanos;

    /// Whole seconds since the Unix epoch.
    fn now_secs(&self) -> u64 {
        self.now().0 / 1_000_000_000
    }
}

/// A clock shared by every part of a process.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> UnixNanos {
        // Before 1970 only on a badly broken clock: then time starts at 0.
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        UnixNanos(since.as_nanos() as u64)
    }
}

impl WallClock {
    /// The wall clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(WallClock)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: UnixNanos) -> Arc<ManualClock> {
        Arc::new(ManualClock { nanos: AtomicU64::new(start.0) })
    }

    /// A clock standing at the wall clock's current time.
    pub fn at_wall_time() -> Arc<ManualClock> {
        ManualClock::new(WallClock.now())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixNanos {
        UnixNanos(self.nanos.load(Ordering::Acquire))
    }
}

/// Stamps commands of one shard: the clock's time, but always after the previous stamp,
/// so that stamps increase strictly along the shard's journal even when the wall clock
/// steps back (recovery and idempotency records rely on it).
#[derive(Clone, Debug)]
pub struct Stamper {
    clock: SharedClock,
    last: UnixNanos,
}

impl Stamper {
    /// A stamper whose next stamp comes after `last` (the last recovered command's).
    pub fn new(clock: SharedClock, last: UnixNanos) -> Self {
        Stamper { clock, last }
    }

    /// The next stamp.
    pub fn stamp(&mut self) -> UnixNanos {
        let now = self.clock.now().max(UnixNanos(self.last.0 + 1));
        self.last = now;
        now
    }

    /// The stamp of a command that asks for one (a replayed recording's): `wanted` when it
    /// comes after every stamp so far, else the next stamp as [`Stamper::stamp`] gives it.
    /// `0` asks for none.
    pub fn stamp_as(&mut self, wanted: UnixNanos) -> UnixNanos {
        if wanted.0 > self.last.0 {
            self.last = wanted;
            wanted
        } else {
            self.stamp()
        }
    }

    /// A command stamped elsewhere (a journaled one): later stamps come after it.
    pub fn observe(&mut self, ts: UnixNanos) {
        self.last = self.last.max(ts);
    }

    /// The last stamp given or observed.
    pub fn last(&self) -> UnixNanos {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_strictly_even_when_the_clock_stands_or_steps_back() {
        let clock = ManualClock::new(UnixNanos(1_000));
        let mut stamper = Stamper::new(clock.clone(), UnixNanos(5_000));
        assert_eq!(stamper.stamp(), UnixNanos(5_001), "after the recovered last stamp");
        assert_eq!(stamper.stamp(), UnixNanos(5_002), "a clock standing still");
        clock.advance(std::time::Duration::from_nanos(10_000));
        assert_eq!(stamper.stamp(), UnixNanos(11_000), "the clock's time once it is ahead");
        stamper.observe(UnixNanos(20_000));
        stamper.observe(UnixNanos(3));
        assert_eq!(stamper.last(), UnixNanos(20_000));
        assert_eq!(stamper.stamp(), UnixNanos(20_001));
    }

    #[test]
    fn a_wished_stamp_is_kept_only_after_every_stamp_so_far() {
        let clock = ManualClock::new(UnixNanos(1_000_000));
        let mut stamper = Stamper::new(clock.clone(), UnixNanos(0));
        assert_eq!(stamper.stamp_as(UnixNanos(7)), UnixNanos(7), "a recording's old stamp");
        assert_eq!(stamper.stamp_as(UnixNanos(9)), UnixNanos(9));
        assert_eq!(stamper.stamp_as(UnixNanos(0)), UnixNanos(1_000_000), "no wish: the clock");
        assert_eq!(stamper.stamp_as(UnixNanos(12)), UnixNanos(1_000_001), "never backwards");
        assert_eq!(stamper.stamp_as(UnixNanos(5_000_000)), UnixNanos(5_000_000));
    }

    #[test]
    fn the_wall_clock_is_past_2020_and_seconds_follow_nanoseconds() {
        let now = WallClock.now();
        assert!(now.0 > 1_577_836_800 * 1_000_000_000);
        let clock = ManualClock::new(UnixNanos(2_500_000_000));
        assert_eq!(clock.now_secs(), 2);
    }
}
