//! WebSocket market data: the `/ws` upgrade, per-connection tasks, control messages.
//!
//! - [`connection`]: one task per connection (client input, answers, pings, closing).
//! - [`crate::fanout::link`]: what the task shares with the connection's fan-out writer.
//! - [`control`]: JSON control messages and replies.
//! - [`inbound`]: client frames.

pub mod connection;
pub mod control;
pub mod inbound;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::{ApiError, ErrorCode};
use crate::protocol::{self, Format};
use crate::request::query_param;
use crate::state::WsContext;

/// Largest `interval_ms` a connection may ask for.
const INTERVAL_MS_MAX: u64 = 1000;

/// Handles `GET /ws`: checks limits, answers 101 and spawns the connection.
///
/// Credentials: `?token=`, else the session cookie (only from an allowed origin). A refused
/// credential is answered with HTTP 401 or 403 to a client that sends no `Origin`; a
/// browser's page sends one and can read nothing of an HTTP answer to its WebSocket (it
/// sees close 1006), so it gets the upgrade and then a close frame: 4401 or 4403 with the
/// reason.
pub fn upgrade(
    mut req: Request<Incoming>,
    ctx: &Arc<WsContext>,
    tokens: &crate::auth::Tokens,
    origins: &crate::cors::Origins,
) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return ApiError::new(ErrorCode::NotWebsocket, "expected a WebSocket upgrade").response();
    }
    // Any Origin, `null` included (an opaque one: a sandboxed frame), is a page.
    let page = req.headers().contains_key(hyper::header::ORIGIN);
    let (claims, refusal) = credentials(&req, tokens, origins);
    if let (Some(refusal), false) = (&refusal, page) {
        ctx.metrics.ws_auth_refusals_total.fetch_add(1, Ordering::Relaxed);
        return refusal.response();
    }
    let format = match query_param(req.uri().query(), "format") {
        None | Some("binary") => Format::Binary,
        Some("json") => Format::Json,
        Some(_) => {
            return ApiError::new(ErrorCode::InvalidFormat, "format must be binary or json")
                .response()
        }
    };
    let interval = match query_param(req.uri().query(), "interval_ms").map(str::parse::<u64>) {
        None => Duration::ZERO,
        Some(Ok(ms)) if ms <= INTERVAL_MS_MAX => Duration::from_millis(ms),
        Some(_) => {
            return ApiError::new(
                ErrorCode::InvalidInterval,
                "interval_ms must be an integer from 0 to 1000",
            )
            .response()
        }
    };
    // A user's connections are bounded too (one token opening thousands would take the
    // slots the reserve below keeps for everyone's traders).
    let user_slot = match &claims {
        Some(c) => match ctx.user_slot(c.acc) {
            Ok(slot) => Some(slot),
            Err(message) => {
                ctx.metrics.ws_rejected_total.fetch_add(1, Ordering::Relaxed);
                return ApiError::new(ErrorCode::TooManyConnections, message).response();
            }
        },
        None => None,
    };
    // Reserve a slot before answering so concurrent upgrades cannot overshoot the limit.
    let metrics = &ctx.metrics;
    let open = metrics.ws_connections.fetch_add(1, Ordering::AcqRel) as usize;
    // A connection that brings no credentials (or refused ones) stops short of the limit:
    // the last slots are kept for traders.
    let limit = match claims {
        Some(_) => ctx.limits.connections_max,
        None => ctx.limits.anonymous_max(),
    };
    if open >= limit || *ctx.shutdown.borrow() {
        metrics.ws_connections.fetch_sub(1, Ordering::AcqRel);
        metrics.ws_rejected_total.fetch_add(1, Ordering::Relaxed);
        let message = if open < ctx.limits.connections_max && !*ctx.shutdown.borrow() {
            "connection limit reached for connections without a token (the rest are kept for \
             signed-in users)"
        } else {
            "connection limit reached"
        };
        return ApiError::new(ErrorCode::TooManyConnections, message).response();
    }
    let upgraded = handshake_flaw(&req).map_or_else(
        || fastwebsockets::upgrade::upgrade(&mut req).map_err(|e| e.to_string()),
        |flaw| Err(flaw.to_string()),
    );
    let (response, upgrade) = match upgraded {
        Ok(pair) => pair,
        Err(message) => {
            metrics.ws_connections.fetch_sub(1, Ordering::AcqRel);
            let mut refused = ApiError::new(ErrorCode::BadHandshake, message).response();
            // RFC 6455 4.4: a refused handshake names the version the server speaks.
            refused
                .headers_mut()
                .insert("sec-websocket-version", hyper::header::HeaderValue::from_static("13"));
            return refused;
        }
    };
    if refusal.is_none() {
        metrics.ws_connections_total.fetch_add(1, Ordering::Relaxed);
    }
    // Shutdown waits for this task: the connection's HTTP task, which holds a sender,
    // is still running, so the upgrade always finds one.
    let slot = ConnectionSlot { ctx: Arc::clone(ctx), _alive: ctx.alive.upgrade() };
    tokio::spawn(async move {
        let ctx = &slot.ctx;
        let upgraded = match upgrade.await {
            Ok(ws) => ws.into_inner().into_inner(),
            Err(e) => return tracing::debug!("upgrade failed: {e}"),
        };
        if let Some(refusal) = refusal {
            ctx.metrics.ws_auth_refusals_total.fetch_add(1, Ordering::Relaxed);
            let close = match refusal.code {
                ErrorCode::OriginNotAllowed => protocol::close::ORIGIN_NOT_ALLOWED,
                _ => protocol::close::UNAUTHORIZED,
            };
            let reason = format!("{}: {}", refusal.code(), refusal.message);
            return refuse(TokioIo::new(upgraded), close, &reason).await;
        }
        // Take the TCP stream back from hyper so reads and writes can be split without a
        // lock, and writes can be vectored; under TLS, with the session's state (boxed:
        // 1.2 KB that only TLS connections need). One call of `run` for both: every await
        // of it makes the task's future as big again.
        let Some((io, read_buf, tls)) = take_stream(upgraded) else {
            return tracing::error!("upgraded connection is neither TCP nor TLS over TCP");
        };
        let user = claims.zip(user_slot);
        connection::run(io, read_buf, format, interval, user, tls, ctx).await;
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// What RFC 6455 4.2.1 requires of an opening handshake that fastwebsockets does not check
/// (it checks the key's presence and the version): HTTP/1.1 or later, a `Host`, and a key
/// that is 16 bytes in base64.
fn handshake_flaw<B>(req: &Request<B>) -> Option<&'static str> {
    use base64::Engine as _;
    if req.version() < hyper::Version::HTTP_11 {
        return Some("a WebSocket handshake needs HTTP/1.1");
    }
    if let Some(flaw) = crate::request::request_head_flaw(req) {
        return Some(flaw);
    }
    let key = req.headers().get(hyper::header::SEC_WEBSOCKET_KEY)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    match decoded {
        Ok(bytes) if bytes.len() == 16 => None,
        _ => Some("Sec-WebSocket-Key must be 16 bytes in base64"),
    }
}

/// The TCP stream under an upgraded connection, the bytes read past the upgrade request,
/// and the TLS session when there is one.
fn take_stream(
    upgraded: hyper::upgrade::Upgraded,
) -> Option<(TcpStream, Bytes, Option<Box<rustls::ServerConnection>>)> {
    use crate::canned::JsonErrors;
    use hyper_util::server::conn::auto::upgrade::downcast;
    let upgraded = match downcast::<TokioIo<JsonErrors<TcpStream>>>(upgraded) {
        Ok(parts) => return Some((parts.io.into_inner().into_inner(), parts.read_buf, None)),
        Err(upgraded) => upgraded,
    };
    type Tls = tokio_rustls::server::TlsStream<TcpStream>;
    let parts = downcast::<TokioIo<JsonErrors<Tls>>>(upgraded).ok()?;
    let (io, tls) = parts.io.into_inner().into_inner().into_inner();
    Some((io, parts.read_buf, Some(Box::new(tls))))
}

/// The connection's claims from `?token=` or the session cookie, or why it is refused.
fn credentials(
    req: &Request<Incoming>,
    tokens: &crate::auth::Tokens,
    origins: &crate::cors::Origins,
) -> (Option<crate::auth::Claims>, Option<ApiError>) {
    let unauthorized = |e: String| Some(ApiError::new(ErrorCode::Unauthorized, e));
    if let Some(token) = query_param(req.uri().query(), "token") {
        return match tokens.verify(token) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, unauthorized(e.to_string())),
        };
    }
    let Some(token) = crate::request::session_cookie(req, origins.tls()) else {
        return (None, None);
    };
    // Any site's page can open a WebSocket to us, and the browser attaches the cookie:
    // only pages of allowed origins may use it (cross-site WebSocket hijacking). An opaque
    // origin (`null`: a sandboxed frame, a `data:` page) is no allowed origin.
    let origin = req.headers().get(hyper::header::ORIGIN).map(|v| v.to_str().unwrap_or("null"));
    if let Some(origin) = origin {
        if origin == "null" || !origins.allows(req, origin) {
            let message = format!("origin {origin} may not use the session cookie");
            return (None, Some(ApiError::new(ErrorCode::OriginNotAllowed, message)));
        }
    }
    // A cookie that no longer works (expired, its session ended, signed by a key the
    // server no longer has) is no reason to refuse public market data: the connection is
    // public, and order entry answers `unauthorized`.
    (tokens.verify(token).ok(), None)
}

/// Sends a close frame with `code` and `reason` on a just-upgraded connection, then ends
/// it (bounded: a peer that does not take a small frame within a second is dropped).
async fn refuse<T: tokio::io::AsyncWrite + Unpin>(mut io: T, code: u16, reason: &str) {
    use tokio::io::AsyncWriteExt;
    let frame = protocol::close_frame(code, reason);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(&frame).await?;
        io.shutdown().await
    })
    .await;
}

/// Holds one of the `connections_max` slots and a handle that keeps shutdown waiting;
/// both are released when the connection's task ends, however it ends.
struct ConnectionSlot {
    ctx: Arc<WsContext>,
    /// Held while the connection lives: shutdown waits for it.
    _alive: Option<tokio::sync::mpsc::Sender<()>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.ctx.metrics.ws_connections.fetch_sub(1, Ordering::AcqRel);
    }
}
