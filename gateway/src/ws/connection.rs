//! One WebSocket connection, served by one task.
//!
//! The task owns the TCP stream's two halves and the connection's subscriptions. It wakes
//! when the client sends something (parsed by [`super::inbound`] from a buffer that is empty
//! while idle), when the hub publishes on a subscribed channel, for pings and heartbeats,
//! and on shutdown. When woken by the hub it walks each subscription's cursor through the
//! channel ring, collects the shared pre-framed chunks and writes them with one vectored
//! write: market data is never copied per connection, and at most one write batch of
//! references is held. Client input is not read while a write batch is pending, so a
//! client cannot make the server queue answers faster than it takes them.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tickgate_engine::{AccountId, ExecReport, OrderId};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use super::control::{self, ErrorCode, Request, RequestError, RequestId};
use super::inbound::{self, Inbound};
use super::{Format, WsContext};
use crate::fanout::{Channel, ConnWaker};
use crate::protocol::{self, bin, close, json, ChannelKind, Opcode};

/// How long a closing connection waits for the client's side of the close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Bytes taken from the socket per read.
const READ_CHUNK: usize = 2048;
/// The window in which more than twice the burst of rate-limit violations closes the
/// connection (1008).
const VIOLATION_WINDOW: Duration = Duration::from_secs(10);

/// Serves an upgraded connection until it closes or the server shuts down.
/// `read_buf` holds bytes the client sent right after its upgrade request.
pub async fn run(
    stream: TcpStream,
    read_buf: Bytes,
    format: Format,
    account: Option<AccountId>,
    ctx: &Arc<WsContext>,
) {
    let _ = stream.set_nodelay(true);
    // A fixed send buffer bounds kernel memory per client and makes a client that stops
    // reading visible to the writer quickly (autotuning would grow it to megabytes).
    let _ =
        socket2::SockRef::from(&stream).set_send_buffer_size(ctx.limits.socket_send_buffer_bytes);
    let (rd, wr) = stream.into_split();
    let limits = &ctx.limits;
    // Copy, then let go: `read_buf` is a view into hyper's 8 KiB read buffer, which it
    // would otherwise keep alive for the life of the connection.
    let input = read_buf.to_vec();
    drop(read_buf);
    let (answers_tx, answers_rx) = tokio::sync::mpsc::channel(ANSWERS_IN_FLIGHT_MAX);
    let mut conn = Conn {
        rd,
        io: wr,
        ctx: Arc::clone(ctx),
        format,
        waker: ConnWaker::new(),
        subs: Vec::new(),
        out: VecDeque::new(),
        out_bytes: 0,
        out_messages: 0,
        gap_times: VecDeque::new(),
        gapped: false,
        closing: None,
        input,
        last_seen: Instant::now(),
        rate: RateLimit {
            tokens: f64::from(limits.inbound_burst),
            burst: f64::from(limits.inbound_burst),
            per_sec: f64::from(limits.inbound_rate_per_sec),
            at: Instant::now(),
            violations: 0,
            window_start: Instant::now(),
        },
        scratch: Vec::new(),
        account,
        answers: answers_tx,
        answers_rx,
        orders: None,
    };
    let closing = conn.serve().await;
    let Conn { rd, mut io, subs, waker, .. } = conn;
    let json = format == Format::Json;
    for s in &subs {
        s.channel.unsubscribe(&waker, json);
    }
    drop(subs);
    if let Closing::Send(..) = closing {
        // Let the client's close (or EOF) arrive before the socket is dropped: closing a
        // socket with unread input makes the kernel send a reset, which can overtake our
        // close frame on its way to the client.
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        let _ = tokio::time::timeout(CLOSE_LINGER, discard_until_eof(&rd)).await;
    }
}

async fn discard_until_eof(rd: &OwnedReadHalf) {
    let mut sink = [0u8; READ_CHUNK];
    loop {
        if rd.readable().await.is_err() {
            return;
        }
        match rd.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
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

/// One subscription: where the connection is in the channel's ring.
struct Sub {
    channel: Arc<Channel>,
    cursor: u64,
    depth: usize,
    last_seq: u64,
    last_sent: Instant,
}

struct Conn {
    rd: OwnedReadHalf,
    io: OwnedWriteHalf,
    ctx: Arc<WsContext>,
    format: Format,
    waker: Arc<ConnWaker>,
    subs: Vec<Sub>,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    out_messages: u64,
    gap_times: VecDeque<Instant>,
    gapped: bool,
    closing: Option<Closing>,
    /// Unparsed client bytes; empty (no heap) between messages.
    input: Vec<u8>,
    last_seen: Instant,
    rate: RateLimit,
    scratch: Vec<u8>,
    /// The authenticated account (`?token=` or `auth`), if any.
    account: Option<AccountId>,
    /// Order-entry answers come back from their tasks through here.
    answers: tokio::sync::mpsc::Sender<Bytes>,
    answers_rx: tokio::sync::mpsc::Receiver<Bytes>,
    /// The private `orders` channel, when subscribed.
    orders: Option<broadcast::Receiver<ExecReport>>,
}

/// Order requests one connection may have waiting for the engine (the inbound rate limit
/// keeps it far below this).
const ANSWERS_IN_FLIGHT_MAX: usize = 256;

/// The next report of the `orders` channel; never resolves when not subscribed.
async fn next_report(
    orders: &mut Option<broadcast::Receiver<ExecReport>>,
) -> Result<ExecReport, broadcast::error::RecvError> {
    match orders {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Why the connection is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    /// The peer went away, or its socket stalled: nothing more can be said.
    Gone,
    /// Send a close frame with this code and reason, then end.
    Send(u16, &'static str),
}

impl Conn {
    /// Serves until the connection ends; returns how.
    async fn serve(&mut self) -> Closing {
        let limits = self.ctx.limits.clone();
        let mut shutdown = self.ctx.shutdown.clone();
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut heartbeat = tokio::time::interval(limits.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
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
        // Bytes that came with the upgrade request.
        self.parse_input(limits.write_batch_bytes_max);
        let waker = Arc::clone(&self.waker);
        loop {
            if self.out.is_empty() && self.closing.is_none() {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {
                        self.closing = Some(Closing::Send(close::GOING_AWAY, "server shutting down"));
                    }
                    ready = self.rd.readable() => match ready {
                        Ok(()) => self.read_input(limits.write_batch_bytes_max),
                        Err(_) => self.closing = Some(Closing::Gone),
                    },
                    _ = ping.tick() => {
                        if self.last_seen.elapsed() > limits.ping_interval + limits.pong_timeout {
                            self.ctx.metrics.ws_heartbeat_closes_total.fetch_add(1, Ordering::Relaxed);
                            self.closing = Some(Closing::Send(close::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
                        } else {
                            self.push(protocol::frame(Opcode::Ping, b"tickgate").into(), 0);
                        }
                    }
                    _ = heartbeat.tick() => self.heartbeats(limits.heartbeat_interval),
                    Some(answer) = self.answers_rx.recv() => self.push(answer, 0),
                    report = next_report(&mut self.orders) => self.report(report),
                    () = waker.woken() => {}
                }
            } else if self.closing.is_none() {
                // Answers that were held back while a batch was pending.
                self.parse_input(limits.write_batch_bytes_max);
            }
            if self.closing.is_none() {
                self.waker.clear();
                self.drain(limits.write_batch_bytes_max);
                self.count_episode();
            }
            match self.closing {
                Some(Closing::Gone) => return Closing::Gone,
                Some(Closing::Send(code, reason)) => {
                    // What is queued (gap notices, error replies) still goes out first.
                    self.push(protocol::close_frame(code, reason).into(), 0);
                    // Best effort: a peer that does not read cannot stall the close.
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
                    return Closing::Send(code, reason);
                }
                None => {}
            }
            if !self.out.is_empty() {
                // Most writes complete at once: arm the stall timer only if this one waits.
                let stall = limits.write_stall_timeout;
                let result = {
                    let mut write = std::pin::pin!(self.flush());
                    let first =
                        std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
                    match first {
                        Poll::Ready(done) => Ok(done),
                        Poll::Pending => tokio::time::timeout(stall, write).await,
                    }
                };
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Closing::Gone,
                    Err(_) => {
                        // Stalled: the socket is full, so not even a close frame can go out.
                        self.ctx.metrics.ws_slow_closes_total.fetch_add(1, Ordering::Relaxed);
                        return Closing::Gone;
                    }
                }
            }
        }
    }

    /// Reads what the socket has and handles complete frames.
    fn read_input(&mut self, budget: usize) {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.rd.try_read(&mut chunk) {
                Ok(0) => {
                    self.closing = Some(Closing::Gone);
                    return;
                }
                Ok(n) => {
                    self.last_seen = Instant::now();
                    self.input.extend_from_slice(&chunk[..n]);
                    // Parse as we go: the buffer never holds more than one frame plus a read.
                    self.parse_input(budget);
                    if self.closing.is_some() || self.out_bytes >= budget {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closing = Some(Closing::Gone);
                    return;
                }
            }
        }
        if self.input.is_empty() && self.input.capacity() > READ_CHUNK {
            self.input = Vec::new(); // an idle connection holds no input buffer
        }
    }

    /// Handles every complete frame in the input buffer, while answers fit the budget.
    fn parse_input(&mut self, budget: usize) {
        let max = self.ctx.limits.ws_message_bytes_max;
        while self.closing.is_none() && self.out_bytes < budget {
            match inbound::parse(&mut self.input, max) {
                Ok(None) => return,
                Ok(Some(Inbound::Text(text))) => self.text(&text),
                Ok(Some(Inbound::Ping(payload))) => {
                    self.push(protocol::frame(Opcode::Pong, &payload).into(), 0);
                }
                Ok(Some(Inbound::Pong)) => {}
                Ok(Some(Inbound::Close)) => {
                    self.closing = Some(Closing::Send(close::NORMAL, ""));
                }
                Err(v) => {
                    self.ctx.metrics.ws_protocol_closes_total.fetch_add(1, Ordering::Relaxed);
                    self.closing = Some(Closing::Send(v.code, v.reason));
                }
            }
        }
    }

    /// One control message: rate limit, parse, answer.
    fn text(&mut self, text: &[u8]) {
        let limits = &self.ctx.limits;
        self.ctx.metrics.ws_requests_total.fetch_add(1, Ordering::Relaxed);
        let request = control::parse(text, &mut self.scratch);
        // A request naming many channels costs more: snapshots are the expensive part.
        let cost = match &request {
            Ok(Request::Subscribe { channels, .. }) => 1.0 + channels.len() as f64 / 8.0,
            _ => 1.0,
        };
        if !self.rate.take(cost) {
            if self.rate.violations > 2 * limits.inbound_burst {
                self.ctx.metrics.ws_protocol_closes_total.fetch_add(1, Ordering::Relaxed);
                self.closing =
                    Some(Closing::Send(close::POLICY, "inbound message rate far over the limit"));
            } else {
                let message =
                    format!("at most {} messages per second", limits.inbound_rate_per_sec);
                let id = request.as_ref().ok().and_then(Request::id).cloned();
                self.error(RequestError { id, code: ErrorCode::RateLimited, message });
            }
            return;
        }
        match request {
            Ok(Request::Subscribe { id, channels, depth }) => self.subscribe(id, channels, depth),
            Ok(Request::Unsubscribe { id, channels }) => self.unsubscribe(id, channels),
            Ok(Request::Ping { id }) => {
                let ts = tickgate_engine::runtime::now_nanos().0;
                self.push(control::reply("pong", &id, serde_json::json!({ "ts": ts })), 0);
            }
            Ok(Request::Auth { id, token }) => self.auth(id, &token),
            Ok(
                r @ (Request::OrderNew { .. }
                | Request::OrderCancel { .. }
                | Request::OrderReplace { .. }),
            ) => self.order_entry(r),
            Err(e) => self.error(e),
        }
    }

    fn auth(&mut self, id: Option<RequestId>, token: &str) {
        if self.account.is_some() {
            let message = "this connection is already authenticated".to_string();
            return self.error(RequestError { id, code: ErrorCode::AlreadyAuthenticated, message });
        }
        match self.ctx.tokens.verify(token) {
            Ok(claims) => {
                self.account = Some(AccountId(claims.acc));
                let fields = serde_json::json!({ "username": claims.sub, "account": claims.acc });
                self.push(control::reply("authenticated", &id, fields), 0);
            }
            Err(e) => {
                let message = e.to_string();
                self.error(RequestError { id, code: ErrorCode::Unauthorized, message });
            }
        }
    }

    /// Runs an order request on its own task (the engine answers asynchronously); the
    /// answer comes back through `answers`, in the order the engine gives them.
    fn order_entry(&mut self, request: Request) {
        let id = request.id().cloned();
        let Some(account) = self.account else {
            let message = "order entry needs an authenticated connection (?token= or auth)".into();
            return self.error(RequestError { id, code: ErrorCode::Unauthorized, message });
        };
        let (trading, answers) = (self.ctx.trading.clone(), self.answers.clone());
        let metrics = Arc::clone(&self.ctx.metrics);
        tokio::spawn(async move {
            let (op, result) = match &request {
                Request::OrderNew { order, .. } => {
                    ("order.accepted", trading.place(account, order).await)
                }
                Request::OrderCancel { order_id, .. } => {
                    ("order.canceled", trading.cancel(account, OrderId(*order_id)).await)
                }
                Request::OrderReplace { order_id, replace, .. } => {
                    ("order.replaced", trading.replace(account, OrderId(*order_id), replace).await)
                }
                _ => return,
            };
            let frame = match result {
                Ok(order) => control::reply(op, &id, serde_json::json!({ "order": order })),
                Err(e) => {
                    metrics.ws_errors_total.fetch_add(1, Ordering::Relaxed);
                    control::reply(
                        "error",
                        &id,
                        serde_json::json!({ "code": e.code, "message": e.message }),
                    )
                }
            };
            // The connection may be gone by now: then nobody needs the answer.
            let _ = answers.send(frame).await;
        });
    }

    /// One report of the `orders` channel (JSON text in both formats: it is low-rate).
    fn report(&mut self, report: Result<ExecReport, broadcast::error::RecvError>) {
        match report {
            Ok(r) => {
                let frame = execution_frame(&r, &self.ctx.trading);
                self.push(frame, 1);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let fields = serde_json::json!({ "channel": "orders", "missed": missed });
                self.push(control::reply("orders_gap", &None, fields), 0);
            }
            Err(broadcast::error::RecvError::Closed) => self.orders = None,
        }
    }

    /// Subscribes to or leaves the private `orders` channel (it must be alone in its
    /// request).
    fn orders_channel(&mut self, id: Option<RequestId>, subscribe: bool) {
        let Some(account) = self.account else {
            let message = "the orders channel needs an authenticated connection".into();
            return self.error(RequestError { id, code: ErrorCode::Unauthorized, message });
        };
        if subscribe {
            self.orders = Some(self.ctx.trading.orders.subscribe(account));
            let ack =
                serde_json::json!({ "channels": [{ "channel": "orders", "account": account.0 }] });
            self.push(control::reply("subscribed", &id, ack), 0);
        } else if self.orders.take().is_some() {
            self.push(
                control::reply("unsubscribed", &id, serde_json::json!({ "channels": ["orders"] })),
                0,
            );
        } else {
            let message = "not subscribed to `orders`".into();
            self.error(RequestError { id, code: ErrorCode::NotSubscribed, message });
        }
    }

    fn push(&mut self, frame: Bytes, messages: u64) {
        self.out_bytes += frame.len();
        self.out_messages += messages;
        self.out.push_back(frame);
    }

    fn error(&mut self, e: RequestError) {
        self.ctx.metrics.ws_errors_total.fetch_add(1, Ordering::Relaxed);
        self.push(control::error_reply(&e), 0);
    }

    /// Resolves channel names; all-or-nothing, so a failed request changes nothing.
    fn resolve(
        &self,
        id: &Option<RequestId>,
        names: &[String],
    ) -> Result<Vec<Arc<Channel>>, RequestError> {
        let directory = &self.ctx.directory;
        names
            .iter()
            .map(|name| {
                let err = |code, message: String| RequestError { id: id.clone(), code, message };
                if let Some(channel) = directory.get(name) {
                    return Ok(Arc::clone(channel));
                }
                match name.split_once('.') {
                    Some((prefix, symbol)) if ChannelKind::from_prefix(prefix).is_some() => {
                        debug_assert!(!directory.has_symbol(symbol));
                        Err(err(ErrorCode::UnknownSymbol, format!("unknown symbol `{symbol}`")))
                    }
                    _ => Err(err(
                        ErrorCode::UnknownChannel,
                        format!("unknown channel `{name}`: expected book.<SYM>, bbo.<SYM> or trades.<SYM>"),
                    )),
                }
            })
            .collect()
    }

    fn subscribe(&mut self, id: Option<RequestId>, names: Vec<String>, depth: usize) {
        if names.iter().any(|n| n == ORDERS_CHANNEL) {
            if names.len() > 1 {
                let message = "subscribe to `orders` in a request of its own".into();
                return self.error(RequestError { id, code: ErrorCode::Malformed, message });
            }
            return self.orders_channel(id, true);
        }
        let channels = match self.resolve(&id, &names) {
            Ok(c) => c,
            Err(e) => return self.error(e),
        };
        let new =
            channels.iter().filter(|c| !self.subs.iter().any(|s| s.channel.id == c.id)).count();
        let max = self.ctx.limits.subscriptions_per_connection_max;
        if self.subs.len() + new > max {
            return self.error(RequestError {
                id,
                code: ErrorCode::LimitExceeded,
                message: format!("at most {max} subscriptions per connection"),
            });
        }
        let json = self.format == Format::Json;
        let mut acks = Vec::with_capacity(channels.len());
        let mut snapshots = Vec::with_capacity(channels.len());
        for channel in channels {
            let start = channel.subscribe(&self.waker, json, depth);
            acks.push(serde_json::json!({
                "channel": channel.name,
                "channel_id": channel.id,
                "seq": start.seq,
                "price_precision": channel.instrument.spec.price_precision,
                "qty_precision": channel.instrument.spec.qty_precision,
            }));
            let sub = Sub {
                channel,
                cursor: start.cursor,
                depth,
                last_seq: start.seq,
                last_sent: Instant::now(),
            };
            match self.subs.iter_mut().find(|s| s.channel.id == sub.channel.id) {
                Some(existing) => *existing = sub, // resubscribe: fresh snapshot, same slot
                None => self.subs.push(sub),
            }
            snapshots.push(start.snapshot);
        }
        self.push(control::reply("subscribed", &id, serde_json::json!({ "channels": acks })), 0);
        for s in snapshots {
            self.push(s, 1);
        }
    }

    fn unsubscribe(&mut self, id: Option<RequestId>, names: Vec<String>) {
        if names.len() == 1 && names[0] == ORDERS_CHANNEL {
            return self.orders_channel(id, false);
        }
        let channels = match self.resolve(&id, &names) {
            Ok(c) => c,
            Err(e) => return self.error(e),
        };
        if let Some(missing) =
            channels.iter().find(|c| !self.subs.iter().any(|s| s.channel.id == c.id))
        {
            let message = format!("not subscribed to `{}`", missing.name);
            return self.error(RequestError { id, code: ErrorCode::NotSubscribed, message });
        }
        let json = self.format == Format::Json;
        for c in &channels {
            c.unsubscribe(&self.waker, json);
        }
        self.subs.retain(|s| !channels.iter().any(|c| c.id == s.channel.id));
        self.push(control::reply("unsubscribed", &id, serde_json::json!({ "channels": names })), 0);
    }

    /// Collects every new chunk of every subscription, up to `budget` bytes.
    fn drain(&mut self, budget: usize) {
        let json = self.format == Format::Json;
        let now = Instant::now();
        for n in 0..self.subs.len() {
            loop {
                if self.out_bytes >= budget {
                    // More next round: stay awake.
                    let _ = self.waker.wake();
                    return;
                }
                let sub = &self.subs[n];
                let head = sub.channel.head();
                if sub.cursor >= head {
                    break;
                }
                let lapped = head - sub.cursor > sub.channel.capacity();
                let chunk = if lapped { None } else { sub.channel.chunk(sub.cursor) };
                let Some(chunk) = chunk else {
                    self.fell_behind(n);
                    continue;
                };
                let frame = if json { chunk.json.clone() } else { Some(chunk.bin.clone()) };
                match frame {
                    Some(frame) if !chunk.resync => {
                        let sub = &mut self.subs[n];
                        sub.cursor += 1;
                        sub.last_seq = chunk.last_seq;
                        sub.last_sent = now;
                        self.push(frame, u64::from(chunk.messages));
                    }
                    // The hub rebuilt the channel, or this JSON client joined as JSON encoding
                    // switched on: start over from a snapshot.
                    _ => self.resync(n),
                }
            }
        }
    }

    fn resync(&mut self, n: usize) {
        let json = self.format == Format::Json;
        let sub = &mut self.subs[n];
        let start = sub.channel.resync(json, sub.depth);
        sub.cursor = start.cursor;
        sub.last_seq = start.seq;
        sub.last_sent = Instant::now();
        self.ctx.metrics.ws_resyncs_total.fetch_add(1, Ordering::Relaxed);
        self.push(start.snapshot, 1);
    }

    /// The ring overran this subscription: conflate book/BBO, announce a gap on trades.
    fn fell_behind(&mut self, n: usize) {
        if self.subs[n].channel.kind != ChannelKind::Trades {
            return self.resync(n);
        }
        let sub = &self.subs[n];
        let channel = Arc::clone(&sub.channel);
        let head = channel.head();
        // The oldest chunk still readable (a margin of one: the hub may be overwriting it).
        let mut index = head.saturating_sub(channel.capacity()).max(sub.cursor) + 1;
        let first = loop {
            match channel.chunk(index) {
                Some(c) if !c.resync => break Some(c.first_seq),
                _ if index + 1 >= head => break None,
                _ => index += 1,
            }
        };
        let from = sub.last_seq + 1;
        let (to, resume) = match first {
            Some(f) => (f - 1, index),
            // Nothing readable: resume at the head, missing everything up to what it follows.
            None => {
                let (head, last_seq) = channel.position();
                (last_seq, head)
            }
        };
        let ts = tickgate_engine::runtime::now_nanos().0;
        if to >= from {
            let frame = if self.format == Format::Json {
                let mut s = String::new();
                json::gap(&mut s, &channel.name, ts, from, to);
                json_array_frame(&s)
            } else {
                let mut b = Vec::new();
                bin::gap(&mut b, channel.id, ts, from, to);
                protocol::frame(Opcode::Binary, &b).into()
            };
            self.push(frame, 1);
        }
        self.ctx.metrics.ws_gaps_total.fetch_add(1, Ordering::Relaxed);
        let sub = &mut self.subs[n];
        sub.last_seq = to;
        sub.cursor = resume;
        self.gapped = true;
    }

    /// Counts one falling-behind episode (however many channels it hit) and closes a
    /// connection that keeps falling behind.
    fn count_episode(&mut self) {
        if !std::mem::take(&mut self.gapped) {
            return;
        }
        let now = Instant::now();
        self.gap_times.push_back(now);
        let window = self.ctx.limits.slow_gap_window;
        while self.gap_times.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.gap_times.pop_front();
        }
        if self.gap_times.len() > self.ctx.limits.slow_gaps_max {
            self.ctx.metrics.ws_slow_closes_total.fetch_add(1, Ordering::Relaxed);
            self.closing = Some(Closing::Send(close::SLOW_CONSUMER, "slow consumer"));
        }
    }

    /// A heartbeat for each caught-up subscription that has been quiet for `interval`.
    fn heartbeats(&mut self, interval: Duration) {
        let now = Instant::now();
        let ts = tickgate_engine::runtime::now_nanos().0;
        for n in 0..self.subs.len() {
            let sub = &self.subs[n];
            if now.duration_since(sub.last_sent) < interval || sub.cursor < sub.channel.head() {
                continue;
            }
            let (id, seq) = (sub.channel.id, sub.last_seq);
            let frame = if self.format == Format::Json {
                let mut s = String::new();
                json::heartbeat(&mut s, &sub.channel.name, seq, ts);
                json_array_frame(&s)
            } else {
                let mut b = Vec::new();
                bin::heartbeat(&mut b, id, seq, ts);
                protocol::frame(Opcode::Binary, &b).into()
            };
            self.subs[n].last_sent = now;
            self.push(frame, 1);
        }
    }

    /// Writes everything queued, vectored, handling partial writes.
    async fn flush(&mut self) -> std::io::Result<()> {
        const IOV_MAX: usize = 512;
        let (frames, bytes, messages) =
            (self.out.len() as u64, self.out_bytes as u64, self.out_messages);
        while !self.out.is_empty() {
            let slices: Vec<IoSlice<'_>> =
                self.out.iter().take(IOV_MAX).map(|b| IoSlice::new(b)).collect();
            let mut written = self.io.write_vectored(&slices).await?;
            self.ctx.metrics.ws_writes_total.fetch_add(1, Ordering::Relaxed);
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let front = self.out.front_mut().expect("written bytes came from queued frames");
                if written >= front.len() {
                    written -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        self.out_bytes = 0;
        self.out_messages = 0;
        let m = &self.ctx.metrics;
        m.ws_frames_sent_total.fetch_add(frames, Ordering::Relaxed);
        m.ws_bytes_sent_total.fetch_add(bytes, Ordering::Relaxed);
        m.ws_messages_sent_total.fetch_add(messages, Ordering::Relaxed);
        Ok(())
    }
}

fn json_array_frame(object: &str) -> Bytes {
    let mut payload = String::with_capacity(object.len() + 2);
    payload.push('[');
    payload.push_str(object);
    payload.push(']');
    protocol::frame(Opcode::Text, payload.as_bytes()).into()
}

/// The private channel of the connection's own execution reports.
pub const ORDERS_CHANNEL: &str = "orders";

/// `{"op":"execution", ...}`: one execution report of the `orders` channel. `seq` is the
/// account's report sequence: contiguous, so a client can tell it missed one.
fn execution_frame(r: &ExecReport, trading: &crate::trading::Trading) -> Bytes {
    use tickgate_engine::types::format_fixed;
    let fields = if r.kind == tickgate_engine::ExecKind::Transferred {
        let asset = trading.engine.assets().get(r.price.0 as usize);
        serde_json::json!({
            "seq": r.seq.0,
            "ts": r.ts.0,
            "kind": r.kind.as_str(),
            "asset": asset.map(|a| a.symbol.as_str()),
            "amount": asset.map(|a| format_fixed(r.last_qty.0, a.precision)),
        })
    } else {
        let (symbol, pp, qp) = match trading.instrument(r.instrument) {
            Some(i) => (i.spec.symbol.as_str(), i.spec.price_precision, i.spec.qty_precision),
            None => ("", 0, 0),
        };
        serde_json::json!({
            "seq": r.seq.0,
            "ts": r.ts.0,
            "kind": r.kind.as_str(),
            "reason": r.reason.as_str(),
            "order_id": r.order_id.0,
            "client_order_id": r.client_order_id,
            "symbol": symbol,
            "side": r.side.as_str(),
            "type": r.order_type.as_str(),
            "price": format_fixed(r.price.0, pp),
            "last_price": format_fixed(r.last_price.0, pp),
            "last_qty": format_fixed(r.last_qty.0, qp),
            "open_qty": format_fixed(r.leaves_qty.0, qp),
            "filled_qty": format_fixed(r.cum_qty.0, qp),
        })
    };
    let mut object = serde_json::json!({ "op": "execution", "channel": ORDERS_CHANNEL });
    if let (Some(o), serde_json::Value::Object(extra)) = (object.as_object_mut(), fields) {
        o.extend(extra);
    }
    protocol::frame(Opcode::Text, object.to_string().as_bytes()).into()
}
