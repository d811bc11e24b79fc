//! One WebSocket connection: a reader task and a writer task over the split TCP stream.
//!
//! The **reader** parses client frames with fastwebsockets (single text frames only),
//! applies the inbound rate limit and hands requests to the writer over a small bounded
//! queue. The **writer** owns the subscriptions: it answers requests, and whenever the hub
//! wakes it, walks each subscription's cursor through the channel ring, collects the
//! shared pre-framed chunks and writes them with one vectored write. It never copies
//! market data and never holds more than one write batch of references.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{Cursor, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use fastwebsockets::{OpCode, Role, WebSocketError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::control::{self, ErrorCode, Request, RequestError, RequestId};
use super::{Format, WsContext};
use crate::fanout::{Channel, ConnWaker};
use crate::protocol::{self, bin, close, json, ChannelKind, Opcode};

/// Requests waiting for the writer; a client that fills this is flooding.
const CONTROL_QUEUE: usize = 64;

/// What the reader tells the writer.
#[derive(Debug)]
enum Ctl {
    Request(Request),
    Reply(Bytes),
    Pong(Bytes),
    Close(u16, &'static str),
    Gone,
}

/// Serves an upgraded connection until it closes or the server shuts down.
pub async fn run(stream: TcpStream, read_buf: Bytes, format: Format, ctx: &Arc<WsContext>) {
    let _ = stream.set_nodelay(true);
    // A fixed send buffer bounds kernel memory per client and makes a client that stops
    // reading visible to the writer quickly (autotuning would grow it to megabytes).
    let _ =
        socket2::SockRef::from(&stream).set_send_buffer_size(ctx.limits.socket_send_buffer_bytes);
    let (read_half, write_half) = stream.into_split();
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    let started = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_loop(
        AsyncReadExt::chain(Cursor::new(read_buf), read_half),
        tx,
        Arc::clone(ctx),
        Arc::clone(&last_seen),
        started,
    ));
    let mut writer = Writer {
        io: write_half,
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
    };
    writer.run(rx, last_seen, started).await;
    // Let the reader see the client's close (or EOF) before the socket is dropped: closing
    // a socket with unread input makes the kernel send a reset, which can overtake our
    // close frame on its way to the client.
    let mut reader = reader;
    if tokio::time::timeout(CLOSE_LINGER, &mut reader).await.is_err() {
        reader.abort();
    }
}

/// How long a closing connection waits for the client's side of the close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

async fn read_loop<R: AsyncRead + Unpin>(
    mut io: R,
    tx: mpsc::Sender<Ctl>,
    ctx: Arc<WsContext>,
    last_seen: Arc<AtomicU64>,
    started: Instant,
) {
    read_frames(&mut io, tx, ctx, last_seen, started).await;
    // Discard whatever else the client sends until it closes its side.
    let mut sink = [0u8; 2048];
    while let Ok(n) = io.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Milliseconds since `started`, for the `last_seen` stamp.
fn millis_since(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// A token bucket for inbound messages.
struct RateLimit {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
    violations: u32,
}

impl RateLimit {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.violations += 1;
            false
        }
    }
}

/// The read half as an AsyncRead fastwebsockets can parse; the write side it is paired
/// with is a sink, because with auto-pong and auto-close off the parser never writes.
async fn read_frames<R: AsyncRead + Unpin>(
    io: &mut R,
    tx: mpsc::Sender<Ctl>,
    ctx: Arc<WsContext>,
    last_seen: Arc<AtomicU64>,
    started: Instant,
) {
    let (mut ws, _) = fastwebsockets::after_handshake_split(io, tokio::io::sink(), Role::Server);
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    ws.set_max_message_size(ctx.limits.ws_message_bytes_max);
    let limits = &ctx.limits;
    let mut rate = RateLimit {
        tokens: f64::from(limits.inbound_burst),
        burst: f64::from(limits.inbound_burst),
        per_sec: f64::from(limits.inbound_rate_per_sec),
        at: Instant::now(),
        violations: 0,
    };
    let mut scratch = Vec::with_capacity(256);
    // Nothing is ever obligated: auto-pong and auto-close are off.
    let mut no_send = |_| async { Ok::<(), std::convert::Infallible>(()) };
    loop {
        let frame = match ws.read_frame(&mut no_send).await {
            Ok(frame) => frame,
            Err(e) => {
                let ctl = match e {
                    WebSocketError::FrameTooLarge => Ctl::Close(close::TOO_BIG, "message too big"),
                    WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) => Ctl::Gone,
                    WebSocketError::InvalidUTF8 => {
                        Ctl::Close(close::INVALID_PAYLOAD, "invalid utf-8")
                    }
                    _ => Ctl::Close(close::PROTOCOL_ERROR, "protocol error"),
                };
                let _ = tx.send(ctl).await;
                return;
            }
        };
        last_seen.store(millis_since(started), Ordering::Relaxed);
        let ctl = match frame.opcode {
            OpCode::Text if !frame.fin => {
                Ctl::Close(close::UNSUPPORTED_DATA, "fragmented messages are not accepted")
            }
            OpCode::Text => {
                ctx.metrics.ws_requests_total.fetch_add(1, Ordering::Relaxed);
                if !rate.take() {
                    if rate.violations > 2 * limits.inbound_burst {
                        Ctl::Close(close::POLICY, "inbound message rate far over the limit")
                    } else {
                        Ctl::Reply(control::error_reply(&RequestError {
                            id: None,
                            code: ErrorCode::RateLimited,
                            message: format!(
                                "at most {} messages per second",
                                limits.inbound_rate_per_sec
                            ),
                        }))
                    }
                } else {
                    match control::parse(&frame.payload, &mut scratch) {
                        Ok(request) => Ctl::Request(request),
                        Err(e) => Ctl::Reply(control::error_reply(&e)),
                    }
                }
            }
            OpCode::Binary | OpCode::Continuation => {
                Ctl::Close(close::UNSUPPORTED_DATA, "only text control messages are accepted")
            }
            OpCode::Ping => Ctl::Pong(Bytes::copy_from_slice(&frame.payload)),
            OpCode::Pong => continue,
            OpCode::Close => {
                let _ = tx.send(Ctl::Close(close::NORMAL, "")).await;
                return;
            }
        };
        let fatal = matches!(ctl, Ctl::Close(..));
        if let Ctl::Reply(_) = ctl {
            ctx.metrics.ws_errors_total.fetch_add(1, Ordering::Relaxed);
        }
        match tx.try_send(ctl) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let _ = tx.send(Ctl::Close(close::POLICY, "too many requests in flight")).await;
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
        if fatal {
            return;
        }
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

struct Writer<W> {
    io: W,
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
}

/// Why the writer is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    /// The peer went away: nothing to say.
    Gone,
    /// Send a close frame with this code and reason, then end.
    Send(u16, &'static str),
}

impl<W> Drop for Writer<W> {
    fn drop(&mut self) {
        let json = self.format == Format::Json;
        for s in &self.subs {
            s.channel.unsubscribe(&self.waker, json);
        }
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Ctl>,
        last_seen: Arc<AtomicU64>,
        started: Instant,
    ) {
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
        loop {
            if self.out.is_empty() && self.closing.is_none() {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => self.closing = Some(Closing::Send(close::GOING_AWAY, "server shutting down")),
                    ctl = rx.recv() => self.handle(ctl.unwrap_or(Ctl::Gone)),
                    _ = ping.tick() => {
                        let silent_ms = millis_since(started).saturating_sub(last_seen.load(Ordering::Relaxed));
                        if Duration::from_millis(silent_ms) > limits.ping_interval + limits.pong_timeout {
                            self.ctx.metrics.ws_heartbeat_closes_total.fetch_add(1, Ordering::Relaxed);
                            self.closing = Some(Closing::Send(close::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
                        } else {
                            self.push(protocol::frame(Opcode::Ping, b"tickgate").into(), 0);
                        }
                    }
                    _ = heartbeat.tick() => self.heartbeats(limits.heartbeat_interval),
                    () = self.waker.woken() => {}
                }
            }
            // Take whatever else is ready without waiting.
            while let Ok(ctl) = rx.try_recv() {
                self.handle(ctl);
                if self.closing.is_some() {
                    break;
                }
            }
            if self.closing == Some(Closing::Gone) {
                return;
            }
            if self.closing.is_none() {
                self.waker.clear();
                self.drain(limits.write_batch_bytes_max);
                self.count_episode();
            }
            if let Some(Closing::Send(code, reason)) = self.closing {
                // What is queued (gap notices, error replies) still goes out first.
                self.push(protocol::close_frame(code, reason).into(), 0);
                // Best effort: a peer that does not read cannot stall shutdown.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
                return;
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
                    Ok(Err(_)) => return, // peer gone
                    Err(_) => {
                        self.ctx.metrics.ws_slow_closes_total.fetch_add(1, Ordering::Relaxed);
                        return; // stalled: the socket is full, a close frame could not go out
                    }
                }
            }
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

    fn handle(&mut self, ctl: Ctl) {
        match ctl {
            Ctl::Request(Request::Subscribe { id, channels, depth }) => {
                self.subscribe(id, channels, depth)
            }
            Ctl::Request(Request::Unsubscribe { id, channels }) => self.unsubscribe(id, channels),
            Ctl::Request(Request::Ping { id }) => {
                let ts = tickgate_engine::runtime::now_nanos().0;
                self.push(control::reply("pong", &id, serde_json::json!({ "ts": ts })), 0);
            }
            Ctl::Reply(frame) => self.push(frame, 0),
            Ctl::Pong(payload) => self.push(protocol::frame(Opcode::Pong, &payload).into(), 0),
            Ctl::Close(code, reason) => {
                if code != close::NORMAL {
                    self.ctx.metrics.ws_protocol_closes_total.fetch_add(1, Ordering::Relaxed);
                }
                self.closing = Some(Closing::Send(code, reason));
            }
            Ctl::Gone => self.closing = Some(Closing::Gone),
        }
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
        let to = first.map_or_else(|| channel.last_seq(), |f| f - 1);
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
        sub.cursor = if first.is_some() { index } else { head };
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
