//! Limits and timings of WebSocket connections and SSE streams (set from flags in
//! [`crate::config`], read by [`crate::ws`] and [`crate::sse`]).

use std::time::Duration;

/// WebSocket limits and timings.
#[derive(Clone, Debug)]
pub struct WsLimits {
    /// Open WebSocket connections at most; more get HTTP 503 before the upgrade.
    pub connections_max: usize,
    /// Of those, kept for connections that bring credentials at the upgrade (a token or
    /// the session cookie): anonymous ones stop this many short (at most a tenth of
    /// `connections_max`), so a flood of anonymous sockets never locks traders out.
    pub reserved_for_users: usize,
    /// Connections one user (account) may hold authenticated at once; more are refused at
    /// the upgrade (`503`) or by `auth` (`limit_exceeded`, the connection stays public).
    pub connections_per_user_max: usize,
    /// Subscriptions one connection may hold.
    pub subscriptions_per_connection_max: usize,
    /// Largest inbound message; larger closes with 1009.
    pub ws_message_bytes_max: usize,
    /// Inbound messages per second (token bucket refill).
    pub inbound_rate_per_sec: u32,
    /// Inbound burst (token bucket size).
    pub inbound_burst: u32,
    /// Server ping period.
    pub ping_interval: Duration,
    /// Silence (no frame at all) after a ping that closes the connection with 4001.
    pub pong_timeout: Duration,
    /// A subscribed channel quiet this long gets a heartbeat message.
    pub heartbeat_interval: Duration,
    /// A write that makes no progress this long closes the connection (4008).
    pub write_stall_timeout: Duration,
    /// Falling-behind episodes on trades channels (each sends gap notices) within
    /// `slow_gap_window` after which a connection is closed (4008).
    pub slow_gaps_max: usize,
    /// Window for `slow_gaps_max`.
    pub slow_gap_window: Duration,
    /// Bytes one vectored write carries at most.
    pub write_batch_bytes_max: usize,
    /// Kernel send buffer per connection (`SO_SNDBUF`): what a client that stops reading
    /// can hold of the server's memory, and how soon the server notices it fell behind.
    pub socket_send_buffer_bytes: usize,
    /// Market data written to a connection and not yet confirmed read by the client, at
    /// most (see [`crate::fanout::outbox`]: read receipts). Beyond its allowance a
    /// connection gets nothing more until the client catches up.
    pub unread_bytes_max: u64,
    /// A connection's allowance at first (it adapts between this and `unread_bytes_max`).
    pub unread_bytes_start: u64,
    /// Growth of all connections' allowances beyond their start, together, at most.
    pub unread_bytes_total: u64,
}

impl WsLimits {
    /// Open connections past which an anonymous upgrade is refused.
    pub fn anonymous_max(&self) -> usize {
        let reserved = self.reserved_for_users.min(self.connections_max / 10);
        self.connections_max - reserved
    }
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            connections_max: 10_000,
            reserved_for_users: 100,
            connections_per_user_max: 64,
            subscriptions_per_connection_max: 64,
            ws_message_bytes_max: 4096,
            inbound_rate_per_sec: 20,
            inbound_burst: 40,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(40),
            heartbeat_interval: Duration::from_secs(5),
            write_stall_timeout: Duration::from_secs(10),
            slow_gaps_max: 5,
            slow_gap_window: Duration::from_secs(60),
            write_batch_bytes_max: 256 * 1024,
            socket_send_buffer_bytes: 256 * 1024,
            unread_bytes_max: 1024 * 1024,
            unread_bytes_start: crate::fanout::outbox::ALLOWANCE_START,
            unread_bytes_total: 128 * 1024 * 1024,
        }
    }
}

/// SSE limits and timing.
#[derive(Clone, Debug)]
pub struct SseLimits {
    /// Open streams per user (more: 429).
    pub streams_per_user_max: u64,
    /// Open streams in total (more: 503).
    pub streams_max: u64,
    /// Heartbeat comment period when idle.
    pub heartbeat: Duration,
    /// `retry:` advice sent on connect.
    pub retry: Duration,
    /// Events a stream may have unsent before it is closed as too slow.
    pub backlog_max: usize,
}

impl Default for SseLimits {
    fn default() -> Self {
        SseLimits {
            streams_per_user_max: 16,
            streams_max: 20_000,
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            backlog_max: 1_024,
        }
    }
}

/// How many places each key (an account, a client address) holds, against a bound given
/// at each take; a place is given back when its [`Counted`] slot is dropped.
#[derive(Debug)]
pub struct Counts<K> {
    held: std::sync::Mutex<std::collections::HashMap<K, usize>>,
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts { held: std::sync::Mutex::default() }
    }
}

/// One place of a key, held until dropped.
#[derive(Debug)]
pub struct Counted<K: std::hash::Hash + Eq + Copy> {
    counts: std::sync::Arc<Counts<K>>,
    key: K,
}

/// Authenticated WebSocket connections per account (`--ws-connections-per-user`).
pub type UserConnections = Counts<u32>;
/// One account's authenticated connection.
pub type UserSlot = Counted<u32>;

impl<K: std::hash::Hash + Eq + Copy> Counts<K> {
    /// A place for `key` if it holds fewer than `max`.
    pub fn take(self: &std::sync::Arc<Self>, key: K, max: usize) -> Option<Counted<K>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted { counts: std::sync::Arc::clone(self), key })
    }

    /// How many places `key` holds.
    #[cfg(test)]
    fn held(&self, key: K) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&key).copied().unwrap_or(0)
    }
}

impl<K: std::hash::Hash + Eq + Copy> Drop for Counted<K> {
    fn drop(&mut self) {
        let mut held = self.counts.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_its_bound_and_a_dropped_slot_frees_one() {
        let users = std::sync::Arc::new(UserConnections::default());
        let (a, b) = (users.take(1, 2).expect("one"), users.take(1, 2).expect("two"));
        assert!(users.take(1, 2).is_none(), "a third is refused");
        let other = users.take(2, 2).expect("another account has its own bound");
        drop(a);
        assert_eq!(users.held(1), 1);
        let c = users.take(1, 2).expect("a freed slot is taken again");
        drop((b, c, other));
        assert_eq!((users.held(1), users.held(2)), (0, 0));
        assert!(users.held.lock().unwrap().is_empty(), "no entry kept for nobody");
    }
}
