//! Login throttling: exponential backoff per username and per client address.
//!
//! Each username and each client address may fail [`FREE_FAILURES`] logins in a row; every
//! failure after that closes the door for twice as long as the one before (1 s, 2 s, 4 s,
//! ... up to [`BLOCK_MAX`]). While closed, login answers `429` with `Retry-After` without
//! checking the password (right or wrong, known user or not: the same answer, at the same
//! cost). A success after the window opens the door again and forgets the failures.
//! Uses tokio's clock, so tests run it on paused time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

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
    blocked_until: Instant,
    last: Instant,
}

/// Failure counts per username and per address.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<Key, Entry>>,
}

fn keys(user: &str, addr: Option<IpAddr>) -> impl Iterator<Item = Key> {
    std::iter::once(Key::User(user.to_string())).chain(addr.map(Key::Addr))
}

impl LoginThrottle {
    /// `Err(wait)` while `user` or `addr` is blocked.
    pub fn check(&self, user: &str, addr: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let wait = keys(user, addr)
            .filter_map(|k| entries.get(&k))
            .map(|e| e.blocked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Records a failed login.
    pub fn failed(&self, user: &str, addr: Option<IpAddr>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= ENTRIES_MAX {
            entries.retain(|_, e| now.saturating_duration_since(e.last) < BLOCK_MAX);
            if entries.len() >= ENTRIES_MAX {
                // A flood of distinct names: forget rather than grow.
                entries.clear();
            }
        }
        for key in keys(user, addr) {
            let e =
                entries.entry(key).or_insert(Entry { failures: 0, blocked_until: now, last: now });
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            if e.failures >= FREE_FAILURES {
                let doublings = (e.failures - FREE_FAILURES).min(16);
                e.blocked_until = now + (BLOCK_MIN * (1u32 << doublings)).min(BLOCK_MAX);
            }
        }
    }

    /// Records a successful login: the user's and the address's failures are forgotten.
    pub fn succeeded(&self, user: &str, addr: Option<IpAddr>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys(user, addr) {
            entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_and_success_resets() {
        let t = LoginThrottle::default();
        let addr = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..FREE_FAILURES - 1 {
            t.failed("alice", addr);
            assert!(t.check("alice", addr).is_ok());
        }
        t.failed("alice", addr);
        assert_eq!(t.check("alice", addr), Err(BLOCK_MIN));
        // Another address is blocked for alice too, and this address for other names.
        assert!(t.check("alice", Some(IpAddr::from([10, 0, 0, 1]))).is_err());
        assert!(t.check("bob", addr).is_err());
        assert!(t.check("bob", None).is_ok());
        tokio::time::advance(BLOCK_MIN).await;
        assert!(t.check("alice", addr).is_ok(), "the window passed");
        t.failed("alice", addr);
        assert_eq!(t.check("alice", addr), Err(BLOCK_MIN * 2), "doubled");
        tokio::time::advance(BLOCK_MIN * 2).await;
        t.succeeded("alice", addr);
        t.failed("alice", addr);
        assert!(t.check("alice", addr).is_ok(), "a success forgets the failures");
        for _ in 0..40 {
            t.failed("mallory", None);
        }
        assert_eq!(t.check("mallory", None), Err(BLOCK_MAX), "capped");
    }
}
