//! `GET /api/v1/alerts/stream`: the per-user Server-Sent Events stream.
//!
//! Each stream is one small task that waits for its user's history to grow, copies the new
//! events (pre-framed, shared by every tab) into a bounded channel, and sends a heartbeat
//! comment when idle; the response body reads that channel. A client that stops reading
//! fills its channel and its stream is closed: its events stay in the history for the
//! reconnect with `Last-Event-ID`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::alerts::{frame_event, AlertHub, Replay, UserAlerts};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Every response body: a complete one, or a stream.
pub type HttpBody = http_body_util::Either<http_body_util::Full<Bytes>, SseBody>;

/// The streaming response body: whatever the stream's task sends.
#[derive(Debug)]
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Releases a stream's places in the limits when its task ends.
struct StreamGuard {
    hub: Arc<AlertHub>,
    user: Arc<UserAlerts>,
    metrics: Arc<Metrics>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.user.streams.fetch_sub(1, Ordering::AcqRel);
        self.hub.streams.fetch_sub(1, Ordering::AcqRel);
        self.metrics.sse_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An opened stream: what to send first, and what the pump needs.
struct Opened {
    user: Arc<UserAlerts>,
    cursor: u64,
    watch: watch::Receiver<u64>,
    /// `retry:` advice, then the replay (or a `reset`).
    initial: Vec<Bytes>,
    guard: StreamGuard,
    /// Ends the stream when the session is revoked.
    session: crate::auth::SessionWatch,
}

/// Authenticates, applies the limits and computes the replay for a stream request.
/// `token` comes from `Authorization: Bearer` or `?token=`; `last_event_id` holds the
/// header's and `?last_event_id=`'s values.
fn open(
    state: &AppState,
    token: Option<&str>,
    last_event_id: [Option<&str>; 2],
) -> Result<Opened, ApiError> {
    let unauthorized = |m: String| ApiError::new(ErrorCode::Unauthorized, m);
    let token = token.ok_or_else(|| unauthorized("missing bearer token".into()))?;
    let claims = state.tokens.verify(token.trim()).map_err(|e| unauthorized(e.to_string()))?;
    // The header (what a reconnecting EventSource sends) wins over the query parameter;
    // either one that is not an id is refused, even when the other is fine.
    let mut ids = last_event_id.into_iter().flatten().map(|v| v.trim().parse::<u64>());
    let (first, second) = (ids.next(), ids.next());
    if matches!(first, Some(Err(_))) || matches!(second, Some(Err(_))) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "Last-Event-ID must be an id from this stream",
        ));
    }
    let last_event_id = first.and_then(Result::ok);
    let hub = &state.alerts;
    let limits = &state.sse;
    let user = hub
        .user(tickgate_engine::AccountId(claims.acc))
        .cloned()
        .ok_or_else(|| unauthorized("no such user".into()))?;
    // Take the places first, so concurrent connects cannot overshoot the limits.
    if user.streams.fetch_add(1, Ordering::AcqRel) >= limits.streams_per_user_max {
        user.streams.fetch_sub(1, Ordering::AcqRel);
        let message = format!("at most {} open streams per user", limits.streams_per_user_max);
        return Err(ApiError::new(ErrorCode::TooManyStreams, message).retry_after(5));
    }
    if hub.streams.fetch_add(1, Ordering::AcqRel) >= limits.streams_max
        || *state.ws.shutdown.borrow()
    {
        hub.streams.fetch_sub(1, Ordering::AcqRel);
        user.streams.fetch_sub(1, Ordering::AcqRel);
        let message = "stream limit reached";
        return Err(ApiError::new(ErrorCode::StreamsFull, message));
    }
    state.metrics.sse_streams.fetch_add(1, Ordering::Relaxed);
    state.metrics.sse_streams_total.fetch_add(1, Ordering::Relaxed);
    let guard = StreamGuard {
        hub: Arc::clone(hub),
        user: Arc::clone(&user),
        metrics: Arc::clone(&state.metrics),
    };
    // Watch before reading the history: nothing published in between is missed.
    let watch = user.watch();
    let mut initial = vec![Bytes::from(format!("retry: {}\n\n", limits.retry.as_millis()))];
    let cursor = match user.replay(last_event_id) {
        Replay::Events(events) => {
            // No Last-Event-ID: live events only, from the newest id now.
            let mut cursor = last_event_id.unwrap_or_else(|| *watch.borrow());
            for e in events {
                cursor = e.id;
                initial.push(e.wire);
            }
            cursor
        }
        Replay::Reset(latest) => {
            state.metrics.sse_resets_total.fetch_add(1, Ordering::Relaxed);
            let data = serde_json::json!({
                "reason": "history_exceeded",
                "message": "events since Last-Event-ID are no longer kept: refetch your state over REST",
                "refetch": ["/api/v1/account", "/api/v1/orders", "/api/v1/fills", "/api/v1/alerts"],
            });
            initial.push(frame_event(latest, "reset", &data));
            latest
        }
    };
    let session = crate::auth::SessionWatch::new(Arc::clone(&state.tokens), claims);
    Ok(Opened { user, cursor, watch, initial, guard, session })
}

fn bearer(value: Option<&[u8]>) -> Option<&str> {
    crate::request::bearer(std::str::from_utf8(value?).ok())
}

/// Handles `GET /api/v1/alerts/stream` arriving through hyper (a keep-alive connection
/// that served other requests first).
pub fn stream(req: &Request<Incoming>, state: &AppState) -> Response<HttpBody> {
    let query = req.uri().query();
    let header = |name: &str| req.headers().get(name).map(|v| v.as_bytes());
    // Browsers' EventSource cannot set headers: the token may come in the query string,
    // or the session cookie with it.
    let cookies = req.headers().get_all(hyper::header::COOKIE).iter().map(|v| v.as_bytes());
    let token = bearer(header(AUTHORIZATION.as_str()))
        .or_else(|| crate::request::query_param(query, "token"))
        .or_else(|| crate::cors::cookie::token(cookies, state.tls));
    let last_event_id = [
        header("last-event-id").map(|v| std::str::from_utf8(v).unwrap_or("invalid")),
        crate::request::query_param(query, "last_event_id"),
    ];
    let opened = match open(state, token, last_event_id) {
        Ok(o) => o,
        Err(refusal) => return refusal.response().map(HttpBody::Left),
    };
    let (tx, rx) = mpsc::channel(state.sse.backlog_max.max(state.alerts.history_max() + 2));
    for b in opened.initial {
        // The channel holds a whole history: the replay always fits.
        let _ = tx.try_send(b);
    }
    tokio::spawn(pump(
        opened.user,
        opened.cursor,
        (opened.watch, state.ws.shutdown.clone(), opened.session),
        tx,
        state.sse.heartbeat,
        opened.guard,
    ));
    let mut response = Response::new(HttpBody::Right(SseBody { rx }));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

const STREAM_REQUEST: &[u8] = b"GET /api/v1/alerts/stream";

/// What the first bytes of a fresh connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstRequest {
    /// An alert stream request: served by [`serve_raw`].
    Stream,
    /// Anything else (or nothing yet at the deadline): hyper takes it.
    Other,
    /// The peer closed (or reset) the connection before a request line: drop it.
    Closed,
}

/// Looks at the first request on a fresh connection with `peek` (nothing is consumed) until
/// `deadline`. Stream requests are served by [`serve_raw`] without hyper: an open stream
/// then costs a few hundred bytes instead of hyper's buffers.
///
/// A peer that sent a prefix of the stream request line and closed is noticed at once (the
/// socket reports its read side closed), and the deadline holds however the bytes trickle
/// in: a few bytes never pin a connection.
pub async fn first_request(stream: &TcpStream, deadline: tokio::time::Instant) -> FirstRequest {
    let mut buf = [0u8; STREAM_REQUEST.len() + 1];
    let mut pause = Duration::from_millis(1);
    loop {
        // `timeout_at` polls the peek before the clock: with bytes waiting, a peek is
        // always ready, so the deadline is checked here.
        if tokio::time::Instant::now() >= deadline {
            return FirstRequest::Other;
        }
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return FirstRequest::Closed,
            Ok(Ok(n)) => n,
            Err(_) => return FirstRequest::Other,
        };
        let seen = n.min(STREAM_REQUEST.len());
        if buf[..seen] != STREAM_REQUEST[..seen] {
            return FirstRequest::Other;
        }
        if n == buf.len() {
            return match buf[STREAM_REQUEST.len()] {
                b' ' | b'?' => FirstRequest::Stream,
                _ => FirstRequest::Other,
            };
        }
        // A request line arriving in pieces: look again, less and less often, unless the
        // peer has gone (a peek cannot tell: the bytes it sent are still waiting).
        match stream.ready(tokio::io::Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => {}
            _ => return FirstRequest::Closed,
        }
        tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Largest request head a raw stream request may have: as large as proxies and browsers
/// make them (hyper takes larger; past this the answer is `431 head_too_large`).
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most header lines a raw stream request may have (hyper's own default).
const HEADER_LINES_MAX: usize = 100;

/// Serves a stream request on a connection of its own: reads and parses the head
/// (`httparse`), answers with an error or `200` and the stream, delimited by closing the
/// connection (`Connection: close`, no chunked encoding).
/// `deadline`: when the whole head must have arrived; `pending` is the connection's place
/// among those without a request yet (its permit and gauge), dropped once the head is in.
pub async fn serve_raw<P>(
    mut stream: TcpStream,
    state: &AppState,
    deadline: tokio::time::Instant,
    pending: P,
) {
    let mut head = Vec::with_capacity(1024);
    // `Some(true)`: the whole head; `Some(false)`: more than the limit.
    let read_head = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&chunk[..n]);
            // Complete (whatever its line endings: bare LF is HTTP too), or never will be.
            if !head_partial(&head) {
                return Some(true);
            }
            if head.len() > HEAD_BYTES_MAX {
                return Some(false);
            }
        }
    };
    let Some(complete) = tokio::time::timeout_at(deadline, read_head).await.ok().flatten() else {
        return;
    };
    drop(pending);
    let (opened, origin) =
        if complete { open_parsed(&head, state) } else { (Err(head_too_large()), None) };
    let opened = match opened {
        Ok(o) => o,
        Err(refusal) => {
            let answer = refusal.raw_http1(&state.origins.raw_headers(origin.as_deref()));
            return answer_and_close(&mut stream, &answer, !complete).await;
        }
    };
    drop(head);
    stream_opened(stream, state, opened, origin).await;
}

/// Writes a small `answer` (a peer that does not take it within a second is not waited
/// for) and closes. With `unread` (the client's request was not all read): unread bytes
/// would turn the close into a reset, which can destroy the answer before the client reads
/// it, so what the client sends is taken for a moment (bounded) first.
pub(crate) async fn answer_and_close(stream: &mut TcpStream, answer: &[u8], unread: bool) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer)).await;
    let _ = stream.shutdown().await;
    if unread {
        let mut sink = [0u8; 4096];
        let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    }
}

fn head_too_large() -> ApiError {
    ApiError::new(
        ErrorCode::HeadTooLarge,
        format!(
            "the request head is over {} KiB or {HEADER_LINES_MAX} header lines",
            HEAD_BYTES_MAX / 1024
        ),
    )
}

/// Parses a stream request's head and opens the stream it asks for; the request's
/// `Origin` either way (for the CORS headers of the answer). Apart from `serve_raw` so
/// the header table lives on the stack for the parse only, not in every open stream's
/// future.
/// Whether `head` is the start of a request head that has not ended yet (not a whole one,
/// nor one that cannot be HTTP).
fn head_partial(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; HEADER_LINES_MAX];
    matches!(httparse::Request::new(&mut headers).parse(head), Ok(httparse::Status::Partial))
}

fn open_parsed(head: &[u8], state: &AppState) -> (Result<Opened, ApiError>, Option<String>) {
    let mut origin = None;
    let mut headers = [httparse::EMPTY_HEADER; HEADER_LINES_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let opened = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let header = |name: &str| {
                req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
            };
            let query = req.path.and_then(|p| p.split_once('?')).map(|(_, q)| q);
            let cookies = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                .map(|h| h.value);
            let token = bearer(header("authorization"))
                .or_else(|| crate::request::query_param(query, "token"))
                .or_else(|| crate::cors::cookie::token(cookies, state.tls));
            origin = header("origin").and_then(|o| std::str::from_utf8(o).ok()).map(str::to_owned);
            let last_event_id = [
                header("last-event-id").map(|v| std::str::from_utf8(v).unwrap_or("invalid")),
                crate::request::query_param(query, "last_event_id"),
            ];
            state.metrics.http_requests_total.fetch_add(1, Ordering::Relaxed);
            let names = req.headers.iter().map(|h| h.name.as_bytes());
            match crate::request::head_flaw(req.version, names) {
                Some(flaw) => Err(ApiError::new(ErrorCode::Malformed, flaw)),
                None => open(state, token, last_event_id),
            }
        }
        Err(httparse::Error::TooManyHeaders) => Err(head_too_large()),
        _ => Err(ApiError::new(ErrorCode::Malformed, "unparsable request head")),
    };
    (opened, origin)
}

/// Writes the answer's head and the stream's history, then serves the stream.
async fn stream_opened(
    stream: TcpStream,
    state: &AppState,
    opened: Opened,
    origin: Option<String>,
) {
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n".to_vec();
    out.extend_from_slice(state.origins.raw_headers(origin.as_deref()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for b in &opened.initial {
        out.extend_from_slice(b);
    }
    let Opened { user, cursor, watch, guard, session, .. } = opened;
    let limits =
        RawLimits { heartbeat: state.sse.heartbeat, stall: state.ws.limits.write_stall_timeout };
    let shutdown = state.ws.shutdown.clone();
    pump_raw(stream, out, user, cursor, (watch, shutdown, session), limits, guard).await;
}

/// What wakes a stream besides its heartbeat: new events, shutdown, a revoked session.
type Wakers = (watch::Receiver<u64>, watch::Receiver<bool>, crate::auth::SessionWatch);

/// The last event of a stream whose session was revoked (logout, user removed): no `id`,
/// so a reconnect resumes from the last real event (and is refused without a new token).
const SESSION_REVOKED: &[u8] = b"event: system\ndata: {\"notice\":\"session_revoked\",\"message\":\"the session was ended (logout): log in again\"}\n\n";

struct RawLimits {
    heartbeat: Duration,
    stall: Duration,
}

/// The raw stream's loop: write what is pending (a client that does not take it within
/// the stall time is dropped: its events stay in the history), then wait for new events,
/// the heartbeat, the client closing, or shutdown. No per-stream queue: the history is the
/// queue, and the cursor is the stream's place in it.
async fn pump_raw(
    mut stream: TcpStream,
    mut out: Vec<u8>,
    user: Arc<UserAlerts>,
    mut cursor: u64,
    (mut watch, mut shutdown, mut session): Wakers,
    limits: RawLimits,
    guard: StreamGuard,
) {
    let mut ticker = tokio::time::interval(limits.heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut fresh = Vec::new();
    let mut ending = false;
    loop {
        if !out.is_empty() {
            match tokio::time::timeout(limits.stall, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    guard.metrics.sse_slow_closes_total.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            out.clear();
            if out.capacity() > 16 * 1024 {
                out = Vec::new(); // a burst went by: do not keep its buffer
            }
        }
        if ending {
            let _ = stream.shutdown().await;
            return;
        }
        tokio::select! {
            changed = watch.changed() => ending = changed.is_err(),
            _ = ticker.tick() => {
                out.extend_from_slice(b": heartbeat\n\n");
                continue;
            }
            ready = stream.readable() => {
                // The client sends nothing on a stream: data or EOF both end it.
                let mut probe = [0u8; 64];
                match ready.map(|()| stream.try_read(&mut probe)) {
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => return,
                }
                continue;
            }
            _ = shutdown.changed() => ending = true,
            () = session.revoked() => {
                out.extend_from_slice(SESSION_REVOKED);
                ending = true;
                continue;
            }
        }
        fresh.clear();
        if !user.since(cursor, &mut fresh) {
            // Fell behind the history while connected: end; the reconnect gets `reset`.
            return;
        }
        for e in fresh.drain(..) {
            cursor = e.id;
            out.extend_from_slice(&e.wire);
        }
    }
}
/// Moves a user's new events into the stream until the client goes away, falls too far
/// behind, or the server shuts down.
async fn pump(
    user: Arc<UserAlerts>,
    mut cursor: u64,
    (mut watch, mut shutdown, mut session): Wakers,
    tx: mpsc::Sender<Bytes>,
    heartbeat: Duration,
    guard: StreamGuard,
) {
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut fresh = Vec::new();
    loop {
        let ending = tokio::select! {
            changed = watch.changed() => changed.is_err(),
            _ = ticker.tick() => {
                if tx.try_send(Bytes::from_static(b": heartbeat\n\n")).is_err() {
                    break; // gone, or not reading at all
                }
                continue;
            }
            () = tx.closed() => break,
            _ = shutdown.changed() => true,
            () = session.revoked() => {
                let _ = tx.try_send(Bytes::from_static(SESSION_REVOKED));
                break;
            }
        };
        fresh.clear();
        if !user.since(cursor, &mut fresh) {
            // Lapped by the history while connected: cannot happen unless the backlog is
            // larger than the history; end the stream and let the reconnect reset.
            break;
        }
        for e in fresh.drain(..) {
            cursor = e.id;
            if tx.try_send(e.wire).is_err() {
                // The client does not keep up: close rather than buffer; the events stay
                // in the history for its reconnect.
                guard.metrics.sse_slow_closes_total.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if ending {
            break;
        }
    }
    drop(guard);
}
