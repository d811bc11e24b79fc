//! Login throttling: exponential backoff per username and per client address.
//!
//! Each username and each client address may fail [`FREE_FAILURES`] logins in a row; every
//! failure after that closes the door for twice as long as the one before (1 s, 2 s, 4 s,
//! ... up to [`BLOCK_MAX`]). While closed, login answers `429` with `Retry-After` without
//! checking the password (right or wrong, known user or not: the same answer, at the same
//! cost). An attempt counts as a failure from the moment it is let through
//! ([`LoginThrottle::attempt`]), so a burst of parallel guesses is counted before any
//! password is checked; a success takes its own count back and forgets the user's
//! failures (not the address's: logging in as oneself does not clear a spray from that
//! address). Time comes from the injected clock, so tests move it without sleeping.

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
    User(String),
    Addr(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    blocked_until: UnixNanos,
    last: UnixNanos,
}

/// Failure counts per username and per address.
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
    std::iter::once(Key::User(user.to_string())).chain(addr.map(Key::Addr))
}

impl LoginThrottle {
    /// No failures yet; time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        LoginThrottle { entries: Mutex::new(HashMap::new()), clock }
    }

    /// Lets a login attempt through, counted as a failure until [`LoginThrottle::succeeded`]
    /// says otherwise; `Err(wait)` while `user` or `addr` is blocked (nothing counted).
    pub fn attempt(&self, user: &str, addr: Option<IpAddr>) -> Result<(), Duration> {
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
        count_failure(&mut entries, user, addr, now);
        Ok(())
    }

    /// The attempt of `user` from `addr` succeeded: the user's failures are forgotten, and
    /// the address gets back the one failure its attempt was counted as.
    pub fn succeeded(&self, user: &str, addr: Option<IpAddr>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&Key::User(user.to_string()));
        if let Some(e) = addr.and_then(|a| entries.get_mut(&Key::Addr(a))) {
            e.failures = e.failures.saturating_sub(1);
            if e.failures < FREE_FAILURES {
                e.blocked_until = e.last;
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
            let e =
                entries.entry(key).or_insert(Entry { failures: 0, blocked_until: now, last: now });
            e.failures = e.failures.saturating_add(1);
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

    #[test]
    fn backoff_doubles_and_success_resets() {
        let clock = tickgate_engine::ManualClock::at_wall_time();
        let t = LoginThrottle::new(clock.clone());
        let addr = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..FREE_FAILURES {
            assert!(t.attempt("alice", addr).is_ok());
        }
        // The fifth attempt, not yet known to fail, already closes the door: a burst of
        // parallel guesses is counted before any password is checked.
        assert_eq!(t.attempt("alice", addr), Err(BLOCK_MIN));
        // Another address is blocked for alice too, and this address for other names.
        assert!(t.attempt("alice", Some(IpAddr::from([10, 0, 0, 1]))).is_err());
        assert!(t.attempt("bob", addr).is_err());
        clock.advance(BLOCK_MIN);
        assert!(t.attempt("alice", addr).is_ok(), "the window passed");
        assert_eq!(t.attempt("alice", addr), Err(BLOCK_MIN * 2), "doubled");
        clock.advance(BLOCK_MIN * 2);
        assert!(t.attempt("alice", addr).is_ok());
        t.succeeded("alice", addr);
        assert!(t.attempt("alice", None).is_ok(), "a success forgets the user's failures");
        // ...but not the address's: logging in as oneself does not clear a spray.
        assert!(t.attempt("carol", addr).is_err(), "the address stays blocked");
        // Every let-through attempt counts, and the block never grows past the cap.
        for _ in 0..40 {
            let _ = t.attempt("mallory", None);
            clock.advance(BLOCK_MAX);
        }
        let _ = t.attempt("mallory", None);
        assert_eq!(t.attempt("mallory", None), Err(BLOCK_MAX), "capped");
    }
}
