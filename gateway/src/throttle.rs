//! Login throttling: exponential backoff per username from a client address, and per
//! client address.
//!
//! Each username from each address (the pair), and each address, may fail
//! [`FREE_FAILURES`] logins in a row; every
//! failure after that closes the door for twice as long as the one before (1 s, 2 s, 4 s,
//! ... up to [`BLOCK_MAX`]). While closed, login answers `429` with `Retry-After` without
//! checking the password (right or wrong, known user or not: the same answer, at the same
//! cost). An attempt counts as a failure from the moment it is let through
//! ([`LoginThrottle::attempt`]), so a burst of parallel guesses is counted before any
//! password is checked; a success takes its own count back, lifts the block that count
//! set (unless a later attempt was counted since) and forgets the pair's failures, not the
//! address's: logging in as oneself does not clear a spray from that address, and the
//! address's next failure closes the door again. A username alone is never blocked: anyone
//! who knows it could then lock its owner out (a few wrong passwords every 15 minutes from
//! anywhere), so guesses at one user from many addresses are bounded per address only. Failures followed by [`BLOCK_MAX`] of
//! quiet after their block ended are no longer "in a row" and are forgotten. Time comes
//! from the injected clock, so tests move it without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tickgate_engine::{SharedClock, UnixNanos};

/// Failures allowed in a row before the backoff starts.
pub const FREE_FAILURES: u32 = 5;
/// The first block.
pub const BLOCK_MIN: Duration = Duration::from_secs(1);
/// The longest block.
pub const BLOCK_MAX: Duration = Duration::from_secs(15 * 60);
/// Failure records kept at most; forgotten after [`BLOCK_MAX`] of quiet.
const ENTRIES_MAX: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// A username from an address (`None`: a client without one, e.g. in tests).
    User(String, Option<IpAddr>),
    Addr(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    blocked_until: UnixNanos,
    last: UnixNanos,
    /// Attempts counted so far (tells a success whether a later attempt was counted).
    counted: u64,
}

/// A login attempt let through, for [`LoginThrottle::succeeded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a successful login hands its attempt to `succeeded`"]
pub struct Attempt {
    /// The address entry's count of attempts once this one was counted.
    addr_counted: Option<u64>,
}

/// Failure counts per username and address, and per address.
#[derive(Debug)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<Key, Entry>>,
    clock: SharedClock,
}

/// `a - b`, or zero when `b` is later.
fn since(a: UnixNanos, b: UnixNanos) -> Duration {
    Duration::from_nanos(a.0.saturating_sub(b.0))
}

fn plus(t: UnixNanos, d: Duration) -> UnixNanos {
    UnixNanos(t.0.saturating_add(d.as_nanos() as u64))
}

fn keys(user: &str, addr: Option<IpAddr>) -> impl Iterator<Item = Key> {
    std::iter::once(Key::User(user.to_string(), addr)).chain(addr.map(Key::Addr))
}

impl LoginThrottle {
    /// No failures yet; time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        LoginThrottle { entries: Mutex::new(HashMap::new()), clock }
    }

    /// Lets a login attempt through, counted as a failure until [`LoginThrottle::succeeded`]
    /// says otherwise; `Err(wait)` while `user` or `addr` is blocked (nothing counted).
    pub fn attempt(&self, user: &str, addr: Option<IpAddr>) -> Result<Attempt, Duration> {
        let now = self.clock.now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let wait = keys(user, addr)
            .filter_map(|k| entries.get(&k))
            .map(|e| since(e.blocked_until, now))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            return Err(wait);
        }
        for key in keys(user, addr) {
            // Quiet for the longest block since its last attempt and since its block ended:
            // those failures are not "in a row" with this attempt any more.
            let quiet = |e: &&mut Entry| since(now, e.last.max(e.blocked_until)) >= BLOCK_MAX;
            if let Some(e) = entries.get_mut(&key).filter(quiet) {
                e.failures = 0;
            }
        }
        count_failure(&mut entries, user, addr, now);
        let addr_counted = addr.and_then(|a| entries.get(&Key::Addr(a))).map(|e| e.counted);
        Ok(Attempt { addr_counted })
    }

    /// `attempt` of `user` from `addr` succeeded: the pair's failures are forgotten; the
    /// address gets back the failure the attempt was counted as, and the block that count
    /// set is lifted unless an attempt counted after it set its own (a success never leaves
    /// the door closed behind it; the address's earlier failures stay).
    pub fn succeeded(&self, user: &str, addr: Option<IpAddr>, attempt: Attempt) {
        let now = self.clock.now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&Key::User(user.to_string(), addr));
        if let Some(e) = addr.and_then(|a| entries.get_mut(&Key::Addr(a))) {
            e.failures = e.failures.saturating_sub(1);
            if e.failures < FREE_FAILURES || attempt.addr_counted == Some(e.counted) {
                e.blocked_until = e.blocked_until.min(now);
            }
        }
    }
}

/// Counts one failure for `user` and `addr`, blocking them once past the free ones.
fn count_failure(
    entries: &mut HashMap<Key, Entry>,
    user: &str,
    addr: Option<IpAddr>,
    now: UnixNanos,
) {
    if entries.len() >= ENTRIES_MAX {
        entries.retain(|_, e| since(now, e.last) < BLOCK_MAX);
    }
    // A flood of distinct names or addresses: the entries quiet longest go first (never
    // all of them, which would lift every block at once).
    while entries.len() >= ENTRIES_MAX {
        let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone())
        else {
            break;
        };
        entries.remove(&oldest);
    }
    {
        for key in keys(user, addr) {
            let fresh = Entry { failures: 0, blocked_until: now, last: now, counted: 0 };
            let e = entries.entry(key).or_insert(fresh);
            e.failures = e.failures.saturating_add(1);
            e.counted += 1;
            e.last = now;
            if e.failures >= FREE_FAILURES {
                let doublings = (e.failures - FREE_FAILURES).min(16);
                e.blocked_until = plus(now, (BLOCK_MIN * (1u32 << doublings)).min(BLOCK_MAX));
            }
        }
    }
}

/// Requests per second per user (a token bucket per account, `governor`).
pub struct UserRateLimit {
    limiter: Option<governor::DefaultKeyedRateLimiter<u32>>,
}

impl std::fmt::Debug for UserRateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRateLimit").field("enabled", &self.limiter.is_some()).finish()
    }
}

impl UserRateLimit {
    /// `per_sec` requests per second with bursts of `burst`; `per_sec == 0`: unlimited.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let limiter = std::num::NonZeroU32::new(per_sec).map(|rate| {
            let burst = std::num::NonZeroU32::new(burst).unwrap_or(rate);
            governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
        });
        UserRateLimit { limiter }
    }

    /// `Err(wait)` when `account` is over its rate.
    pub fn check(&self, account: u32) -> Result<(), std::time::Duration> {
        use governor::clock::{Clock, DefaultClock};
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter
            .check_key(&account)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A throttle on a clock the test moves, and the client address of the tests.
    fn throttle() -> (Arc<tickgate_engine::ManualClock>, LoginThrottle, Option<IpAddr>) {
        let clock = tickgate_engine::ManualClock::at_wall_time();
        let t = LoginThrottle::new(clock.clone());
        (clock, t, Some(IpAddr::from([127, 0, 0, 1])))
    }

    #[test]
    fn backoff_doubles_and_success_resets() {
        let (clock, t, addr) = throttle();
        for _ in 0..FREE_FAILURES {
            assert!(t.attempt("alice", addr).is_ok());
        }
        // The fifth attempt, not yet known to fail, already closes the door: a burst of
        // parallel guesses is counted before any password is checked.
        assert_eq!(t.attempt("alice", addr), Err(BLOCK_MIN));
        // This address is blocked for other names too; alice from another address is not
        // (else anyone could lock her out by failing as her).
        assert!(t.attempt("bob", addr).is_err());
        let elsewhere = Some(IpAddr::from([10, 0, 0, 1]));
        let ok = t.attempt("alice", elsewhere).expect("alice from elsewhere");
        t.succeeded("alice", elsewhere, ok);
        assert!(t.attempt("alice", addr).is_err(), "her success elsewhere lifts nothing here");
        clock.advance(BLOCK_MIN);
        assert!(t.attempt("alice", addr).is_ok(), "the window passed");
        assert_eq!(t.attempt("alice", addr), Err(BLOCK_MIN * 2), "doubled");
        clock.advance(BLOCK_MIN * 2);
        let ok = t.attempt("alice", addr).expect("the window passed");
        t.succeeded("alice", addr, ok);
        // A success leaves no block behind: the next login from the address goes through
        // (behind a proxy, one address is everyone's)...
        let ok = t.attempt("bob", addr).expect("not blocked by alice's success");
        t.succeeded("bob", addr, ok);
        let _ = t.attempt("carol", addr).expect("nor by bob's");
        // ...but the address's failures stay: its next failure closes the door again, and
        // logging in as oneself does not clear a spray.
        assert!(t.attempt("dave", addr).is_err(), "carol's attempt counted: blocked again");
        // A success whose count was followed by another's keeps the later block.
        clock.advance(BLOCK_MIN * 4);
        let first = t.attempt("alice", addr).expect("carol's block is over");
        clock.advance(BLOCK_MIN * 8);
        let _second = t.attempt("erin", addr).expect("alice's block is over");
        t.succeeded("alice", addr, first);
        assert_eq!(t.attempt("frank", addr), Err(BLOCK_MIN * 16), "erin's block stays");
        // Every let-through attempt counts, and the block never grows past the cap.
        // (Each retry comes as the block ends, so the failures stay in a row.)
        let mut counted = 0;
        while counted < 40 {
            match t.attempt("mallory", None) {
                Ok(_) => counted += 1,
                Err(wait) => clock.advance(wait),
            }
        }
        assert_eq!(t.attempt("mallory", None), Err(BLOCK_MAX), "capped");
    }

    /// Failures followed by the longest block's time of quiet are not "in a row" with the
    /// next one.
    #[test]
    fn old_failures_are_forgotten() {
        let (clock, t, addr) = throttle();
        for n in 0..FREE_FAILURES {
            let _ = t.attempt(&format!("user{n}"), addr).expect("free failures");
        }
        assert!(t.attempt("someone", addr).is_err(), "the address is blocked");
        clock.advance(BLOCK_MIN + BLOCK_MAX - Duration::from_millis(1));
        assert!(t.attempt("early", addr).is_ok_and(|_| t.attempt("next", addr).is_err()));
        // (That attempt was counted: the door closed again, for 2 s.)
        clock.advance(BLOCK_MIN * 2 + BLOCK_MAX);
        for n in 0..FREE_FAILURES - 1 {
            let _ = t.attempt(&format!("again{n}"), addr).expect("counted from zero again");
        }
    }

    /// A success forgets its pair's failures (here a client without an address, whose
    /// only count is the pair's).
    #[test]
    fn a_success_forgets_the_pairs_failures() {
        let (_, t, _) = throttle();
        for _ in 0..FREE_FAILURES - 1 {
            let _ = t.attempt("alice", None).expect("free failures");
        }
        let ok = t.attempt("alice", None).expect("the last free one");
        t.succeeded("alice", None, ok);
        for _ in 0..FREE_FAILURES - 1 {
            let _ = t.attempt("alice", None).expect("counted from zero again");
        }
    }
}
