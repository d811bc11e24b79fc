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
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, watch};

use crate::alerts::{frame_event, AlertHub, Replay, UserAlerts};
use crate::http::{json_error, AppState, HttpBody};
use crate::metrics::Metrics;

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

fn error(status: StatusCode, code: &str, message: &str) -> Response<HttpBody> {
    json_error(status, code, message).map(HttpBody::Left)
}

/// Handles `GET /api/v1/alerts/stream`.
pub fn stream(req: &Request<Incoming>, state: &AppState) -> Response<HttpBody> {
    let query = req.uri().query();
    // Browsers' EventSource cannot set headers: the token may come in the query string.
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| crate::ws::query_param(query, "token"));
    let Some(token) = token else {
        return crate::rest::unauthorized("missing bearer token").map(HttpBody::Left);
    };
    let claims = match state.tokens.verify(token.trim()) {
        Ok(c) => c,
        Err(e) => return crate::rest::unauthorized(&e.to_string()).map(HttpBody::Left),
    };
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| crate::ws::query_param(query, "last_event_id"));
    let last_event_id = match last_event_id.map(|v| v.trim().parse::<u64>()) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "Last-Event-ID must be an id from this stream",
            )
        }
    };
    let hub = &state.alerts;
    let limits = &state.sse;
    let Some(user) = hub.user(tickgate_engine::AccountId(claims.acc)).cloned() else {
        return crate::rest::unauthorized("no such user").map(HttpBody::Left);
    };
    // Take the places first, so concurrent connects cannot overshoot the limits.
    if user.streams.fetch_add(1, Ordering::AcqRel) >= limits.streams_per_user_max {
        user.streams.fetch_sub(1, Ordering::AcqRel);
        let message = format!("at most {} open streams per user", limits.streams_per_user_max);
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", &message);
        response.headers_mut().insert("retry-after", HeaderValue::from_static("5"));
        return response;
    }
    if hub.streams.fetch_add(1, Ordering::AcqRel) >= limits.streams_max
        || *state.ws.shutdown.borrow()
    {
        hub.streams.fetch_sub(1, Ordering::AcqRel);
        user.streams.fetch_sub(1, Ordering::AcqRel);
        return error(StatusCode::SERVICE_UNAVAILABLE, "too_many_streams", "stream limit reached");
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
    let (tx, rx) = mpsc::channel(limits.backlog_max.max(hub.history_max() + 2));
    let retry = format!("retry: {}\n\n", limits.retry.as_millis());
    let _ = tx.try_send(Bytes::from(retry));
    let cursor = match user.replay(last_event_id) {
        Replay::Events(events) => {
            // No Last-Event-ID: live events only, from the newest id now.
            let mut cursor = last_event_id.unwrap_or_else(|| *watch.borrow());
            for e in events {
                cursor = e.id;
                // The channel holds a whole history: the replay always fits.
                let _ = tx.try_send(e.wire);
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
            let _ = tx.try_send(frame_event(latest, "reset", &data));
            latest
        }
    };
    tokio::spawn(pump(user, cursor, watch, tx, limits.heartbeat, state.ws.shutdown.clone(), guard));
    let mut response = Response::new(HttpBody::Right(SseBody { rx }));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Moves a user's new events into the stream until the client goes away, falls too far
/// behind, or the server shuts down.
async fn pump(
    user: Arc<UserAlerts>,
    mut cursor: u64,
    mut watch: watch::Receiver<u64>,
    tx: mpsc::Sender<Bytes>,
    heartbeat: Duration,
    mut shutdown: watch::Receiver<bool>,
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
