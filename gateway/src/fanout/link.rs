//! A connection's outgoing side, shared by its task and its writer thread.
//!
//! A [`Link`] holds the socket and, under one short lock, the [`Outbox`]: the connection's
//! subscriptions (a cursor into each channel's ring), the frames queued for it and its
//! falling-behind record. Two parties write through it:
//!
//! - the connection's **writer** thread ([`crate::fanout::writer`]), for market data: it
//!   walks the cursors and writes everything new with one non-blocking vectored write;
//! - the connection's own **task** ([`crate::ws::connection`]), for answers, pings and
//!   heartbeats, and whenever the socket is full: the writer then marks the outbox
//!   `blocked`, wakes the task and keeps off until the task has waited for the socket and
//!   written the rest.
//!
//! Either way frames leave in the order they were queued, and at most one write batch is
//! held per connection: memory is bounded by `write_batch_bytes_max` plus the kernel's send
//! buffer, whatever the client does.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::outbox::Outbox;
use super::ChunkCache;
use crate::metrics::Metrics;
use crate::protocol::Format;

/// What every link of a server shares: counters and the per-connection limits.
#[derive(Debug)]
pub struct LinkConfig {
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Bytes one write batch (and the TLS record buffer) holds at most.
    pub write_batch_bytes_max: usize,
    /// Falling-behind episodes within `slow_gap_window` before a connection is closed.
    pub slow_gaps_max: usize,
    /// See `slow_gaps_max`.
    pub slow_gap_window: Duration,
    /// Bytes written and not confirmed by a read receipt before market data pauses, at most
    /// (each connection's allowance adapts below it: see [`crate::fanout::outbox`]).
    pub unread_bytes_max: u64,
    /// Each connection's allowance at first.
    pub unread_bytes_start: u64,
    /// The growth all connections' allowances share (`--ws-unread-bytes-total`).
    pub allowances: super::outbox::AllowancePool,
    /// A connection held back by its allowance this long, without a read receipt that
    /// releases it, is closed as a slow consumer (`--write-stall-ms`, as for a full
    /// socket).
    pub held_max: Duration,
    /// Time for the messages a link writes itself (gap notices, heartbeats, pongs).
    pub clock: tickgate_engine::SharedClock,
}

/// Why the connection is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The peer went away, or its socket stalled: nothing more can be said.
    Gone,
    /// Send a close frame with this code and reason, then end.
    Send(u16, &'static str),
}

/// Outcome of writing what is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Done,
    /// The socket is full; the rest stays queued.
    Blocked,
    /// The socket failed: the peer is gone.
    Failed,
}

/// Counters a writer adds up over a round and publishes once (shared atomics per write
/// would bounce between the writer threads' caches).
#[derive(Debug, Default)]
pub struct Tally {
    /// Write system calls.
    pub writes: u64,
    /// Frames written (counted when the connection's queue is fully written).
    pub frames: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Market-data messages in the batches fully written.
    pub messages: u64,
}

impl Tally {
    /// Adds the counts to the metrics and starts over.
    pub fn publish(&mut self, m: &Metrics) {
        if self.writes > 0 {
            m.ws_writes_total.fetch_add(self.writes, Ordering::Relaxed);
            m.ws_frames_sent_total.fetch_add(self.frames, Ordering::Relaxed);
            m.ws_bytes_sent_total.fetch_add(self.bytes, Ordering::Relaxed);
            m.ws_messages_sent_total.fetch_add(self.messages, Ordering::Relaxed);
        }
        *self = Tally::default();
    }
}

/// What a writer's visit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    /// Wrote what was new, or had nothing to do.
    Done,
    /// Inside the connection's interval: visit again at this time.
    Later(Instant),
    /// Held back by its read-receipt allowance since then: nothing to write until a pong
    /// releases it (its task then tells the writer: [`crate::fanout::Writers::unpark`])
    /// or until it has been held `held_max`, when a visit closes it.
    Held(Instant),
}

/// A connection's socket and outbox, shared by its task and its writer.
#[derive(Debug)]
pub struct Link {
    /// Process-unique id (also picks the writer).
    pub id: u64,
    /// The TCP stream: the task reads it, task and writer write it (under the lock).
    pub stream: TcpStream,
    /// Least time between two market-data writes (`interval_ms`; zero: as they come).
    interval: Duration,
    state: Mutex<Outbox>,
    task: Notify,
    config: Arc<LinkConfig>,
}

impl Link {
    /// A link over an upgraded stream.
    pub fn new(
        stream: TcpStream,
        format: Format,
        interval: Duration,
        tls: Option<Box<rustls::ServerConnection>>,
        config: Arc<LinkConfig>,
    ) -> Arc<Link> {
        let tls = tls.map(|mut t| {
            // Encrypted records waiting for the socket, at most: the write batch's bound.
            t.set_buffer_limit(Some(config.write_batch_bytes_max));
            t
        });
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(Link {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            stream,
            interval,
            state: Mutex::new({
                let allowance = (config.unread_bytes_start, config.unread_bytes_max);
                let mut outbox = Outbox::new(format, allowance, tls).on_trial();
                outbox.held_max = config.held_max;
                outbox
            }),
            task: Notify::new(),
            config,
        })
    }

    /// A pong arrived at `now` (clock ns): a read receipt, perhaps (see
    /// [`Outbox::pong`]). `None` when it is none (see [`Outbox::receipt`]); else whether
    /// it released market data held back for it.
    pub fn pong(&self, payload: &[u8], now: u64) -> Option<bool> {
        let mut st = self.lock();
        st.receipt(payload)?;
        Some(st.pong(payload, now, &self.config.allowances))
    }

    /// [`Outbox::room_for_snapshots`] of `st` (this link's outbox), lent by the pool of
    /// every connection's allowance growth.
    pub fn room_for_snapshots(&self, st: &mut Outbox, bytes: u64) -> bool {
        st.room_for_snapshots(bytes, &self.config.allowances)
    }

    /// The outbox. Held briefly: never across an await, at most for one non-blocking write.
    pub fn lock(&self) -> MutexGuard<'_, Outbox> {
        // Plain data that stays consistent between statements: a panic elsewhere while
        // holding it must not take the connection's writer down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the writer handed the connection back to its task (blocked, closing).
    pub async fn task_woken(&self) {
        self.task.notified().await;
    }

    /// The writer's visit: send what is new, unless the task owns the writing now or the
    /// connection's interval has not passed since its last write (then the writer comes
    /// back when it has, once however many visits were put off).
    /// `cache`: the writer's copy of the rings.
    pub fn visit(&self, tally: &mut Tally, cache: &mut ChunkCache) -> Visit {
        let mut st = self.lock();
        if st.blocked || st.closing.is_some() {
            return Visit::Done;
        }
        let now = Instant::now();
        // The interval never costs data: a subscription half a ring behind is written now.
        if let Some(due) = st.hold_until.filter(|due| now < *due && !st.far_behind()) {
            if std::mem::replace(&mut st.deferred, true) {
                return Visit::Done;
            }
            return Visit::Later(due);
        }
        st.deferred = false;
        self.pump_paced(&mut st, tally, now, true, Some(cache));
        if let Some(since) = st.held_since().filter(|_| st.closing.is_none() && !st.blocked) {
            return Visit::Held(since);
        }
        Visit::Done
    }

    /// How long a held connection waits for a releasing pong before it is closed.
    pub fn held_max(&self) -> Duration {
        self.config.held_max
    }

    /// The connection task's pump (after a request, a read receipt, a ping): writes what
    /// is queued, and with `collect` market data too, unless the connection's interval has
    /// not passed since its last write (then the writer's next visit does, when it is
    /// due). The task wakes on every read receipt: collecting then regardless would break
    /// the interval.
    pub fn pump_task(&self, tally: &mut Tally, collect: bool) {
        let mut st = self.lock();
        if st.blocked || st.closing.is_some() {
            return;
        }
        let now = Instant::now();
        let due = st.hold_until.is_none_or(|due| now >= due);
        self.pump_paced(&mut st, tally, now, due && collect, None);
    }

    /// [`Link::pump`], then, if market data was collected and written, the connection's
    /// interval starts again from `now`.
    fn pump_paced(
        &self,
        st: &mut Outbox,
        tally: &mut Tally,
        now: Instant,
        collect: bool,
        cache: Option<&mut ChunkCache>,
    ) {
        let writes = tally.writes;
        self.pump(st, tally, collect, cache);
        if collect && !self.interval.is_zero() && tally.writes > writes {
            st.hold_until = Some(now + self.interval);
        }
    }

    /// Collects what the subscriptions have not sent yet (with `collect`) and writes it
    /// with what is queued, until caught up or the socket is full (then `blocked`, and the
    /// task is woken to wait for the socket). Sets `closing` for a slow consumer or a dead
    /// socket. `cache`: the writer's copy of the rings (`None` from a connection's task,
    /// which reads the rings).
    pub fn pump(
        &self,
        st: &mut Outbox,
        tally: &mut Tally,
        collect: bool,
        mut cache: Option<&mut ChunkCache>,
    ) {
        let c = &self.config;
        loop {
            let more = collect
                && st.drain(
                    &c.metrics,
                    c.write_batch_bytes_max,
                    c.clock.as_ref(),
                    cache.as_deref_mut(),
                );
            st.count_episode(c.slow_gaps_max, c.slow_gap_window, &c.metrics);
            if st.closing.is_some() {
                self.task.notify_one();
                return;
            }
            if st.out.is_empty() && !st.tls.as_ref().is_some_and(|t| t.wants_write()) {
                return;
            }
            match st.write(&self.stream, tally) {
                Flushed::Done if more => {}
                Flushed::Done => return,
                Flushed::Blocked => {
                    st.blocked = true;
                    self.config.metrics.ws_blocked_total.fetch_add(1, Ordering::Relaxed);
                    self.task.notify_one();
                    return;
                }
                Flushed::Failed => {
                    st.closing = Some(Closing::Gone);
                    self.task.notify_one();
                    return;
                }
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // What the pool lent this connection goes back to the others.
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        self.config.allowances.give(st.lent());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::outbox::{AllowancePool, ALLOWANCE_START, ALLOWANCE_TRIAL};

    /// A connection whose allowance grew gives the growth back to the pool when it ends.
    #[tokio::test]
    async fn an_ended_connection_gives_its_allowance_growth_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client =
            TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let config = Arc::new(LinkConfig {
            metrics: Arc::default(),
            write_batch_bytes_max: 256 * 1024,
            slow_gaps_max: 5,
            slow_gap_window: Duration::from_secs(60),
            unread_bytes_max: 1024 * 1024,
            unread_bytes_start: ALLOWANCE_START,
            allowances: AllowancePool::new(1024 * 1024),
            held_max: Duration::from_secs(10),
            clock: tickgate_engine::WallClock::shared(),
        });
        let link = Link::new(server, Format::Binary, Duration::ZERO, None, Arc::clone(&config));
        // Held: the allowance queued and unconfirmed; the pong of a receipt at its end
        // releases it. The first ends the connection's trial (the start, not growth), the
        // next doubles the allowance, lent by the pool.
        let hold_and_release = |bytes: u64| {
            let ping = {
                let mut st = link.lock();
                st.push(vec![0u8; bytes as usize].into(), 1);
                st.receipt_ping()
            };
            link.pong(&ping[crate::protocol::frame_header_len(&ping)..], 0) == Some(true)
        };
        assert_eq!(link.lock().allowance(), ALLOWANCE_TRIAL, "a new connection is on trial");
        assert!(hold_and_release(ALLOWANCE_TRIAL));
        assert_eq!(link.lock().allowance(), ALLOWANCE_START);
        assert_eq!(config.allowances.used(), 0, "the start is no growth");
        assert!(hold_and_release(ALLOWANCE_START));
        assert_eq!(link.lock().allowance(), 2 * ALLOWANCE_START);
        assert_eq!(config.allowances.used(), ALLOWANCE_START);
        drop(link);
        assert_eq!(config.allowances.used(), 0, "given back");
        drop(client);
    }
}
