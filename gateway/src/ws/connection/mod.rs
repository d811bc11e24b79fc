//! One WebSocket connection: its task, and the [`Link`] it shares with its writer.
//!
//! The task owns what the client sends: it reads the socket (parsed by [`super::inbound`]
//! from a buffer that is empty while idle), answers control messages, sends pings and
//! heartbeats, and ends the connection. Market data does not go through it: the
//! connection's writer thread ([`crate::fanout::writer`]) writes that straight from the
//! channel rings (see [`crate::fanout::link`]). The task writes only its own answers, and takes
//! over all writing while the socket is full: it then waits for room before reading
//! anything more from the client, so a client cannot make the server queue answers faster
//! than it takes them.

mod requests;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tickgate_engine::{AccountId, OrderId};

use crate::orders::{AccountReport, Status};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use super::control::{self, ErrorCode, Request, RequestError, RequestId};
use super::inbound::{self, Inbound};
use crate::fanout::link::{Closing, Flushed, Link, Tally};
use crate::fanout::outbox::Sub;
use crate::fanout::Channel;
use crate::protocol::Format;
use crate::protocol::{self, close, ChannelKind, Opcode};
use crate::state::WsContext;

/// How long a closing connection waits for the client's side of the close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Bytes taken from the socket per read.
const READ_CHUNK: usize = 2048;
/// The window in which more than twice the burst of rate-limit violations closes the
/// connection (1008).
const VIOLATION_WINDOW: Duration = Duration::from_secs(10);

/// What a client's WebSocket ping takes from its inbound rate, in messages: four pings
/// cost one message. A keep-alive pings every few seconds; a flood pinged as fast as it
/// could made the server frame and write a pong for each.
const PING_COST: f64 = 0.25;

/// How long the final writes of a closing connection (queued frames, the close frame) may
/// take: a peer that does not read cannot hold a closing connection open.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Serves an upgraded connection until it closes or the server shuts down.
/// `read_buf` holds bytes the client sent right after its upgrade request.
pub async fn run(
    stream: TcpStream,
    read_buf: Bytes,
    format: Format,
    interval: Duration,
    user: Option<(crate::auth::Claims, crate::limits::UserSlot)>,
    tls: Option<Box<rustls::ServerConnection>>,
    ctx: &Arc<WsContext>,
) {
    let (claims, user_slot) = user.unzip();
    let _ = stream.set_nodelay(true);
    // A fixed send buffer bounds kernel memory per client and makes a client that stops
    // reading visible to the writer quickly (autotuning would grow it to megabytes).
    let _ =
        socket2::SockRef::from(&stream).set_send_buffer_size(ctx.limits.socket_send_buffer_bytes);
    let limits = &ctx.limits;
    // Copy, then let go: `read_buf` is a view into hyper's 8 KiB read buffer, which it
    // would otherwise keep alive for the life of the connection.
    let input = read_buf.to_vec();
    drop(read_buf);
    let link = Link::new(stream, format, interval, tls, Arc::clone(&ctx.links));
    let mut input = input;
    // Under TLS the session may hold requests decrypted along with the upgrade's.
    link.lock().take_decrypted(&mut input);
    // From here on the writer holds the link: the guard lets go of it however the task
    // ends (returns, panics, or is dropped), or the socket would stay open and written to.
    let attached = Attached::new(&link, ctx);
    let mut conn = Conn {
        link: Arc::clone(&link),
        ctx: Arc::clone(ctx),
        format,
        input,
        last_seen: Instant::now(),
        receipts_only: false,
        rate: RateLimit {
            tokens: f64::from(limits.inbound_burst),
            burst: f64::from(limits.inbound_burst),
            per_sec: f64::from(limits.inbound_rate_per_sec),
            at: Instant::now(),
            violations: 0,
            window_start: Instant::now(),
        },
        scratch: Vec::new(),
        account: claims.as_ref().map(|c| AccountId(c.acc)),
        session: claims.map(|c| crate::auth::SessionWatch::new(Arc::clone(&ctx.tokens), c)),
        user_slot,
        answers: None,
        orders: None,
        cancel_on_disconnect: None,
        placed: HashSet::new(),
        in_flight: Arc::default(),
        tally: Tally::default(),
        market: ctx.market.clone(),
    };
    let closing = conn.serve().await;
    let disconnect_cancel = match (conn.account, conn.cancel_on_disconnect) {
        (Some(account), Some(scope)) => {
            Some((account, scope, std::mem::take(&mut conn.placed), conn.answers.take()))
        }
        _ => None,
    };
    drop(conn);
    drop(attached);
    if let Some((account, scope, placed, answers)) = disconnect_cancel {
        if !*ctx.shutdown.borrow() {
            let ctx = Arc::clone(ctx);
            tokio::spawn(cancel_on_disconnect(ctx, account, scope, placed, answers));
        }
    }
    if let Closing::Send(..) = closing {
        // Let the client's close (or EOF) arrive before the socket is dropped: closing a
        // socket with unread input makes the kernel send a reset, which can overtake our
        // close frame on its way to the client.
        let _ = socket2::SockRef::from(&link.stream).shutdown(std::net::Shutdown::Write);
        let _ = tokio::time::timeout(CLOSE_LINGER, discard_until_eof(&link.stream)).await;
    }
}

/// What cancel-on-disconnect cancels when the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectScope {
    /// The orders the connection placed, still open.
    Connection,
    /// Every open order of the account, however placed.
    Account,
}

/// Cancels, after a connection ended with cancel-on-disconnect on, the orders its `scope`
/// says: first waits for the connection's order requests still in flight (each ends with
/// the engine's answer or its timeout), so an order placed just before the end is
/// canceled too.
async fn cancel_on_disconnect(
    ctx: Arc<WsContext>,
    account: AccountId,
    scope: DisconnectScope,
    mut placed: HashSet<OrderId>,
    answers: Option<Answers>,
) {
    if let Some((sender, mut receiver)) = answers {
        drop(sender);
        // Every request task holds a sender: `None` once the last one is done.
        while let Some(answer) = receiver.recv().await {
            placed.extend(answer.placed);
        }
    }
    let mut outcome = match scope {
        DisconnectScope::Account => ctx.trading.cancel_all(account, None).await,
        DisconnectScope::Connection => {
            ctx.trading.cancel_these(account, |o| placed.contains(&o.id)).await
        }
    };
    // Nobody is left to retry what the engine could not take: the server does, while the
    // engine is busy or slow (a cancel of an order that closed meanwhile is refused, not
    // repeated), for a bounded time.
    let mut canceled = outcome.canceled.len() as u64;
    let (mut delay, until) = (Duration::from_millis(50), Instant::now() + DISCONNECT_RETRY_FOR);
    loop {
        let retry: HashSet<OrderId> = outcome
            .not_canceled
            .iter()
            .filter(|(_, e)| {
                matches!(
                    e.code,
                    ErrorCode::EngineBusy | ErrorCode::EngineTimeout | ErrorCode::EngineUnavailable
                )
            })
            .map(|(id, _)| *id)
            .collect();
        if retry.is_empty() || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        outcome = ctx.trading.cancel_these(account, |o| retry.contains(&o.id)).await;
        canceled += outcome.canceled.len() as u64;
    }
    ctx.metrics.ws_disconnect_cancels_total.fetch_add(canceled, Ordering::Relaxed);
    let left: Vec<u64> = outcome
        .not_canceled
        .iter()
        .filter(|(_, e)| e.code != ErrorCode::OrderClosed)
        .map(|(id, _)| id.0)
        .collect();
    if left.is_empty() {
        if canceled > 0 {
            tracing::info!(account = account.0, canceled, "cancel on disconnect");
        }
    } else {
        tracing::warn!(
            account = account.0,
            canceled,
            orders = ?left,
            "cancel on disconnect: these orders could not be canceled and stay open"
        );
    }
}

/// A connection registered with its writer and counted in its channels; undone on drop.
struct Attached {
    link: Arc<Link>,
    ctx: Arc<WsContext>,
}

impl Attached {
    fn new(link: &Arc<Link>, ctx: &Arc<WsContext>) -> Attached {
        ctx.writers.attach(link);
        Attached { link: Arc::clone(link), ctx: Arc::clone(ctx) }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut st = self.link.lock();
        // The writer keeps off from now on, even before it reads the detach.
        st.closing.get_or_insert(Closing::Gone);
        let json = st.format == Format::Json;
        for s in st.subs.drain(..) {
            s.channel.unsubscribe(json);
        }
        drop(st);
        self.ctx.writers.detach(self.link.id);
    }
}

/// Waits until `stream` is readable, with this task's waker in the stream's own read slot
/// (`poll_read_ready`) rather than in the waiter list `readable()` uses. hyper read the
/// upgrade request through that slot and left its connection task's waker there: with
/// `readable()` nothing would ever replace it, and the finished HTTP task (6.5 KB) would
/// stay allocated as long as the WebSocket connection (docs/BENCHMARKS.md, idle memory).
fn read_ready(stream: &TcpStream) -> impl std::future::Future<Output = std::io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| stream.poll_read_ready(cx))
}

/// Waits until `stream` has room, through its own write slot (see [`read_ready`]).
fn write_ready(stream: &TcpStream) -> impl std::future::Future<Output = std::io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| stream.poll_write_ready(cx))
}

async fn discard_until_eof(stream: &TcpStream) {
    while stream.readable().await.is_ok() && discard_input(stream) {}
}

/// Reads and drops what the socket has; `false` at end of stream or on an error. Not
/// async on purpose: its buffer lives on the thread's stack, not in every connection's
/// task (a buffer held across an await is part of the task's size for its whole life).
fn discard_input(stream: &TcpStream) -> bool {
    let mut sink = [0u8; READ_CHUNK];
    loop {
        match stream.try_read(&mut sink) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// A token bucket for inbound messages.
struct RateLimit {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
    violations: u32,
    window_start: Instant,
}

impl RateLimit {
    /// Takes `cost` tokens, or counts a violation.
    fn take(&mut self, cost: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            return true;
        }
        if now.duration_since(self.window_start) > VIOLATION_WINDOW {
            self.window_start = now;
            self.violations = 0;
        }
        self.violations += 1;
        false
    }
}

/// The task's side of a connection.
struct Conn {
    link: Arc<Link>,
    ctx: Arc<WsContext>,
    format: Format,
    /// Unparsed client bytes; empty (no heap) between messages.
    input: Vec<u8>,
    last_seen: Instant,
    /// What woke the task was only read receipts: its pump writes what is queued and
    /// leaves market data to the writer (a receipt comes every half allowance of data, 16
    /// KiB during a new connection's trial and 64 KiB or more after it, and one that
    /// releases a hold unparks the connection at its writer; collecting on each would move
    /// the writer's work to this task).
    receipts_only: bool,
    rate: RateLimit,
    scratch: Vec<u8>,
    /// The authenticated account (`?token=` or `auth`), if any.
    account: Option<AccountId>,
    /// Its session: the connection closes with 4003 when it is revoked.
    session: Option<crate::auth::SessionWatch>,
    /// Its place among the user's connections (`--ws-connections-per-user`), given back
    /// when the connection ends.
    user_slot: Option<crate::limits::UserSlot>,
    /// Order-entry answers come back from their tasks through here; created by the first
    /// order request (a channel preallocates ~1 KB, and most connections never trade).
    answers: Option<Answers>,
    /// The private `orders` channel, when subscribed.
    orders: Option<broadcast::Receiver<AccountReport>>,
    /// What to cancel when the connection ends (`cancel_on_disconnect`), if anything.
    cancel_on_disconnect: Option<DisconnectScope>,
    /// Orders this connection placed and may still be open (for cancel-on-disconnect with
    /// the connection's scope), at most [`PLACED_TRACKED_MAX`].
    placed: HashSet<OrderId>,
    /// Its order requests still running (a cancel-all waits for those before it).
    in_flight: Arc<requests::InFlight>,
    tally: Tally,
    /// On a gateway node: whether its market data is stale (it lost the engine node).
    market: Option<tokio::sync::watch::Receiver<bool>>,
}

/// How long cancel-on-disconnect retries cancels the engine could not take (busy, slow).
const DISCONNECT_RETRY_FOR: Duration = Duration::from_secs(30);

/// Order ids a connection remembers for cancel-on-disconnect before it forgets the closed
/// ones among them.
const PLACED_TRACKED_MAX: usize = 100_000;

/// Order requests one connection may have waiting for the engine (the inbound rate limit
/// keeps it far below this).
const ANSWERS_IN_FLIGHT_MAX: usize = 256;

/// An order request's answer, and the order it placed (an `order.new` that left an order
/// open), for cancel-on-disconnect.
struct Answer {
    frame: Bytes,
    placed: Option<OrderId>,
}

type Answers = (tokio::sync::mpsc::Sender<Answer>, tokio::sync::mpsc::Receiver<Answer>);

/// The next order-entry answer; never resolves before the first order request.
async fn next_answer(answers: &mut Option<Answers>) -> Option<Answer> {
    match answers {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next change of a gateway node's market data freshness (`true`: stale); never
/// resolves on the single process.
async fn next_market_state(market: &mut Option<tokio::sync::watch::Receiver<bool>>) -> bool {
    match market {
        Some(rx) => match rx.changed().await {
            Ok(()) => *rx.borrow_and_update(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The next report of the `orders` channel; never resolves when not subscribed.
async fn next_report(
    orders: &mut Option<broadcast::Receiver<AccountReport>>,
) -> Result<AccountReport, broadcast::error::RecvError> {
    match orders {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Conn {
    /// Serves until the connection ends; returns how.
    async fn serve(&mut self) -> Closing {
        let limits = self.ctx.limits.clone();
        let mut shutdown = self.ctx.shutdown.clone();
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // When to look for quiet subscriptions next (`Outbox::heartbeats` says).
        let mut heartbeat = Box::pin(tokio::time::sleep(limits.heartbeat_interval));
        let welcome = control::reply(
            "welcome",
            &None,
            serde_json::json!({
                "version": protocol::PROTOCOL_VERSION,
                "format": if self.format == Format::Json { "json" } else { "binary" },
                "heartbeat_interval_ms": limits.heartbeat_interval.as_millis() as u64,
                "ping_interval_ms": limits.ping_interval.as_millis() as u64,
                "subscriptions_max": limits.subscriptions_per_connection_max,
                "message_bytes_max": limits.ws_message_bytes_max,
            }),
        );
        self.push(welcome, 0);
        // A gateway node's market data freshness: the state now (said only if stale), then
        // its changes; not a change that happened before this connection.
        if let Some(market) = &mut self.market {
            if *market.borrow_and_update() {
                let notice = serde_json::json!({ "state": "stale" });
                self.push(control::reply("market_data", &None, notice), 0);
            }
        }
        // Bytes that came with the upgrade request.
        self.parse_input(limits.write_batch_bytes_max);
        let link = Arc::clone(&self.link);
        loop {
            self.pump();
            let (blocked, closing) = {
                let st = link.lock();
                (st.blocked, st.closing)
            };
            if !blocked && closing.is_none() && !self.input.is_empty() {
                // Requests left over when the answers reached the budget: their answers
                // went out, so handle them now rather than at the client's next bytes.
                let before = self.input.len();
                self.parse_input(limits.write_batch_bytes_max);
                if self.input.len() != before {
                    continue; // send their answers, then look again
                }
            }
            if let Some(closing) = closing {
                // Boxed: its flushes would make every idle connection's task bigger.
                return Box::pin(self.close(closing)).await;
            }
            if blocked {
                // The socket is full and the writer has handed the connection over: wait
                // for room, reading nothing meanwhile.
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {
                        self.set_closing(Closing::Send(close::GOING_AWAY, "server shutting down"));
                    }
                    room = tokio::time::timeout(limits.write_stall_timeout, write_ready(&link.stream)) => {
                        match room {
                            Ok(Ok(())) => {
                                if self.unblock() {
                                    // Answers held back while the socket was full.
                                    self.parse_input(limits.write_batch_bytes_max);
                                }
                            }
                            Ok(Err(_)) => self.set_closing(Closing::Gone),
                            Err(_) => {
                                // Stalled: the socket is full, so not even a close frame can go out.
                                self.ctx.metrics.ws_slow_closes_total.fetch_add(1, Ordering::Relaxed);
                                self.set_closing(Closing::Gone);
                            }
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.set_closing(Closing::Send(close::GOING_AWAY, "server shutting down"));
                }
                ready = read_ready(&link.stream) => match ready {
                    Ok(()) => self.read_input(limits.write_batch_bytes_max),
                    Err(_) => self.set_closing(Closing::Gone),
                },
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > limits.ping_interval + limits.pong_timeout {
                        self.ctx.metrics.ws_heartbeat_closes_total.fetch_add(1, Ordering::Relaxed);
                        self.set_closing(Closing::Send(close::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
                    } else {
                        let ping = self.link.lock().receipt_ping();
                        self.push(ping, 0);
                    }
                }
                () = &mut heartbeat => {
                    let (clock, every) = (self.ctx.links.clock.as_ref(), limits.heartbeat_interval);
                    let next = link.lock().heartbeats(Instant::now(), every, clock);
                    heartbeat.as_mut().reset(next.into());
                }
                Some(answer) = next_answer(&mut self.answers) => {
                    if let Some(id) = answer.placed {
                        self.remember_placed(id);
                    }
                    self.push(answer.frame, 0)
                }
                report = next_report(&mut self.orders) => self.report(report),
                stale = next_market_state(&mut self.market) => {
                    let state = if stale { "stale" } else { "live" };
                    let notice = control::reply("market_data", &None, serde_json::json!({ "state": state }));
                    self.push(notice, 0);
                }
                () = crate::auth::revoked(&mut self.session) => {
                    self.set_closing(Closing::Send(close::SESSION_REVOKED, "session revoked"));
                }
                // The writer found the socket full, or decided the connection must close.
                () = link.task_woken() => {}
            }
        }
    }

    /// Writes what is queued and what the subscriptions have not sent yet, unless the
    /// socket is full or the connection is closing.
    fn pump(&mut self) {
        let collect = !std::mem::take(&mut self.receipts_only);
        self.link.pump_task(&mut self.tally, collect);
        self.tally.publish(&self.ctx.metrics);
    }

    /// The socket has room again: write the rest; `true` once everything queued is out
    /// (the writer takes the connection back; what came meanwhile is sent by the next
    /// pump).
    fn unblock(&mut self) -> bool {
        let mut st = self.link.lock();
        let done = match st.write(&self.link.stream, &mut self.tally) {
            Flushed::Done => {
                st.blocked = false;
                true
            }
            Flushed::Blocked => false, // woken early: wait again
            Flushed::Failed => {
                st.closing.get_or_insert(Closing::Gone);
                false
            }
        };
        drop(st);
        self.tally.publish(&self.ctx.metrics);
        done
    }

    /// Sends the close frame after whatever is queued (best effort, bounded), then ends.
    async fn close(&mut self, closing: Closing) -> Closing {
        if let Closing::Send(code, reason) = closing {
            self.link.lock().push(protocol::close_frame(code, reason).into(), 0);
            // Under TLS, `close_notify` only after the close frame is out: a peer ignores
            // whatever comes after it (RFC 8446, 6.1).
            let flushed = tokio::time::timeout(CLOSE_FLUSH, async {
                self.flush().await?;
                self.link.lock().close_notify();
                self.flush().await
            });
            let _ = flushed.await;
        }
        closing
    }

    /// Writes everything queued, waiting for the socket as needed (the writer keeps off a
    /// closing connection, so nothing is added meanwhile).
    async fn flush(&mut self) -> std::io::Result<()> {
        loop {
            let flushed = self.link.lock().write(&self.link.stream, &mut self.tally);
            self.tally.publish(&self.ctx.metrics);
            match flushed {
                Flushed::Done => return Ok(()),
                Flushed::Blocked => write_ready(&self.link.stream).await?,
                Flushed::Failed => return Err(std::io::ErrorKind::BrokenPipe.into()),
            }
        }
    }

    /// Marks the connection as ending (the first reason stands).
    fn set_closing(&self, closing: Closing) {
        self.link.lock().closing.get_or_insert(closing);
    }

    /// Reads what the socket has and handles complete frames.
    fn read_input(&mut self, budget: usize) {
        self.receipts_only = true;
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let read = self.link.lock().read(&self.link.stream, &mut chunk);
            match read {
                Ok(0) => {
                    self.set_closing(Closing::Gone);
                    return;
                }
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    // Parse as we go: the buffer never holds more than one frame plus a read.
                    if !self.parse_input(budget) {
                        // Under TLS, plaintext already decrypted stays in the session, and
                        // the socket will not wake us for it: keep it with the input
                        // (bounded: rustls holds at most 16 KiB of it).
                        self.link.lock().take_decrypted(&mut self.input);
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.set_closing(Closing::Gone);
                    return;
                }
            }
        }
        if self.input.is_empty() && self.input.capacity() > READ_CHUNK {
            self.input = Vec::new(); // an idle connection holds no input buffer
        }
    }

    /// Handles every complete frame in the input buffer while answers fit the budget;
    /// `false` when it stopped for the budget or because the connection is closing.
    fn parse_input(&mut self, budget: usize) -> bool {
        let max = self.ctx.limits.ws_message_bytes_max;
        loop {
            {
                let st = self.link.lock();
                if st.closing.is_some() || st.out_bytes >= budget {
                    return false;
                }
            }
            let frame = inbound::parse(&mut self.input, max);
            if let Ok(Some(_)) = frame {
                // A whole frame shows the client alive; bytes of one that never ends do not
                // (a byte every half second held a silent connection open for good).
                self.last_seen = Instant::now();
            }
            match frame {
                Ok(None) => return true,
                Ok(Some(Inbound::Text(text))) => {
                    self.receipts_only = false;
                    self.text(&text);
                }
                Ok(Some(Inbound::Ping(payload))) => {
                    self.receipts_only = false;
                    self.ping(&payload);
                }
                Ok(Some(Inbound::Pong(payload))) => {
                    // A read receipt. Market data held back for it goes out with the
                    // writer's next round: it left the connection out of its rounds while
                    // held, and the unpark wakes it (the task keeps to its own frames).
                    let now = self.ctx.links.clock.now().0;
                    match self.link.pong(&payload, now) {
                        Some(true) => self.ctx.writers.unpark(self.link.id),
                        Some(false) => {}
                        // No receipt (a keep-alive's answer, or a pong nobody asked for):
                        // it costs what a ping does, so a flood of them is closed as one
                        // of pings is (one flooding client took a core from the others).
                        None => self.unasked_pong(),
                    }
                }
                Ok(Some(Inbound::Close)) => self.set_closing(Closing::Send(close::NORMAL, "")),
                Err(v) => {
                    self.ctx.metrics.ws_protocol_closes_total.fetch_add(1, Ordering::Relaxed);
                    self.set_closing(Closing::Send(v.code, v.reason));
                }
            }
        }
    }

    /// Queues a frame (written by the next pump).
    fn push(&self, frame: Bytes, messages: u64) {
        self.link.lock().push(frame, messages);
    }

    fn error(&self, e: RequestError) {
        self.ctx.metrics.ws_errors_total.fetch_add(1, Ordering::Relaxed);
        self.push(control::error_reply(&e), 0);
    }
}

pub use requests::ORDERS_CHANNEL;
