//! The one HTTP listener: routing, JSON errors, health and metrics.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tickgate_engine::runtime::EngineHandle;

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::ws::{self, WsContext};

/// The client's address, put into every request's extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// What request handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// WebSocket context.
    pub ws: Arc<WsContext>,
    /// Users.
    pub users: crate::auth::Users,
    /// Token issuing and checking.
    pub tokens: Arc<crate::auth::Tokens>,
    /// Per-user REST request rate.
    pub rest_limit: crate::rest::UserRateLimit,
    /// Users' orders and fills.
    pub orders: Arc<crate::orders::OrderStore>,
    /// Users' alert histories and price alerts.
    pub alerts: Arc<crate::alerts::AlertHub>,
    /// SSE limits.
    pub sse: crate::sse::SseLimits,
    /// Failed logins per username and address.
    pub login_throttle: crate::throttle::LoginThrottle,
    /// Candles of every instrument.
    pub candles: Arc<crate::candles::Candles>,
    /// Password checks (argon2) running at once, at most.
    pub login_slots: tokio::sync::Semaphore,
    /// Time allowed for a request body once its head arrived.
    pub body_timeout: std::time::Duration,
    /// Operator token; `None`: operator endpoints disabled.
    pub admin_token: Option<String>,
    /// When `/debug/digest` last ran (it walks the whole state on the engine thread).
    pub digest_gate: std::sync::Mutex<Option<std::time::Instant>>,
    /// Origins allowed cross-origin requests (CORS) and cookie-authenticated changes.
    pub origins: crate::cors::Origins,
    /// The listener speaks TLS (cookies are `Secure`).
    pub tls: bool,
}

/// Shortest time between two `/debug/digest` computations.
const DIGEST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Every response body: a complete one, or an SSE stream.
pub type HttpBody = http_body_util::Either<Full<Bytes>, crate::sse::SseBody>;

/// The 405 answer, with the `Allow` header (RFC 9110) naming the methods the route takes.
pub fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response =
        ApiError::new(ErrorCode::MethodNotAllowed, format!("use {allow}")).response();
    response
        .headers_mut()
        .insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allow));
    response
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
    response
}

/// Routes one request, and adds the CORS headers its answer needs.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<HttpBody>, Infallible> {
    if let Some(preflight) = state.origins.preflight(&req) {
        return Ok(preflight.map(HttpBody::Left));
    }
    let origin = crate::cors::origin(&req).map(str::to_owned);
    let mut response = route(req, &state).await;
    state.origins.answer(response.headers_mut(), origin.as_deref());
    Ok(response)
}

async fn route(req: Request<Incoming>, state: &Arc<AppState>) -> Response<HttpBody> {
    let path = req.uri().path();
    if path != "/ws" {
        state.metrics.http_requests_total.fetch_add(1, Ordering::Relaxed);
    }
    if path == "/api/v1/alerts/stream" {
        if req.method() == Method::GET {
            return crate::sse::stream(&req, state);
        }
        return method_not_allowed("GET").map(HttpBody::Left);
    }
    if path.starts_with("/api/v1/") {
        return crate::rest::route(req, state).await.map(HttpBody::Left);
    }
    // HEAD is served wherever GET is (hyper sends the head without the body).
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let response = match path {
        "/ws" if req.method() == Method::GET => {
            ws::upgrade(req, &state.ws, &state.tokens, &state.origins)
        }
        "/healthz" if get => {
            let c = state.engine.counters();
            let failure = state.engine.durability_failure();
            let journal: Vec<_> = (0..state.engine.shards())
                .filter_map(|s| state.engine.journal_stats(s))
                .map(|j| j.applied_seq.load(Ordering::Relaxed))
                .collect();
            let status =
                if failure.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            json_response(
                status,
                &serde_json::json!({
                    "status": if failure.is_some() { "failing" } else { "ok" },
                    "engine": { "shards": state.engine.shards(), "commands": c.commands, "events": c.events },
                    "journal": {
                        "enabled": !journal.is_empty(),
                        "applied_seq": journal,
                        "failure": failure,
                        "snapshot_warning": state.engine.snapshot_warning(),
                    },
                    "ws_connections": state.metrics.ws_connections.load(Ordering::Relaxed),
                }),
            )
        }
        "/debug/digest" if get => digest(state).await,
        "/metrics" if get => {
            let mut response =
                Response::new(Full::new(Bytes::from(state.metrics.render(&state.engine))));
            let headers = response.headers_mut();
            headers
                .insert(CONTENT_TYPE, "text/plain; version=0.0.4".parse().expect("static header"));
            headers.insert(CACHE_CONTROL, "no-store".parse().expect("static header"));
            response
        }
        "/ws" => method_not_allowed("GET"),
        "/healthz" | "/metrics" | "/debug/digest" => method_not_allowed("GET, HEAD"),

        // The web terminal's page and modules.
        _ => match crate::web::asset(path) {
            Some(asset) if get => asset,
            Some(_) => method_not_allowed("GET, HEAD"),
            None => ApiError::new(ErrorCode::NotFound, "no such route").response(),
        },
    };
    response.map(HttpBody::Left)
}

/// Per shard, between two commands: the state digest (compare with
/// `tickgate verify-journal`), the journal sequence it is valid at, and the money totals.
async fn digest(state: &AppState) -> Response<Full<Bytes>> {
    {
        // The digest hashes every balance and resting order on the engine thread: at most
        // one per second, so it cannot be used to take the matching thread away.
        let mut last = state.digest_gate.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < DIGEST_INTERVAL) {
            let mut response =
                ApiError::new(ErrorCode::RateLimited, "at most one per second").response();
            response.headers_mut().insert("retry-after", "1".parse().expect("static header"));
            return response;
        }
        *last = Some(std::time::Instant::now());
    }
    let engine = state.engine.clone();
    let answer = tokio::task::spawn_blocking(move || {
        (0..engine.shards()).map(|s| engine.digest(s)).collect::<Result<Vec<_>, _>>()
    })
    .await;
    match answer {
        Ok(Ok(shards)) => {
            let shards: Vec<_> = shards
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    serde_json::json!({
                        "shard": i,
                        "journal_seq": d.journal_seq,
                        "state_digest": format!("{:016x}", d.state),
                        "commands": d.counters.commands,
                    })
                })
                .collect();
            json_response(StatusCode::OK, &serde_json::json!({ "shards": shards }))
        }
        _ => ApiError::new(ErrorCode::EngineUnavailable, "engine stopped").response(),
    }
}
