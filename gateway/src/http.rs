//! The one HTTP listener's router: REST, SSE, the WebSocket upgrade, health, metrics.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::error::{ApiError, ErrorCode};
use crate::reply::{json_response, method_not_allowed};
use crate::state::AppState;
use crate::ws;

/// Shortest time between two `/debug/digest` computations.
const DIGEST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Every response body: a complete one, or an SSE stream.
pub type HttpBody = crate::sse::HttpBody;

/// Routes one request, and adds the CORS headers its answer needs and the ones every
/// answer carries ([`crate::cors::Origins::harden`]).
pub async fn handle(
    mut req: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<HttpBody>, Infallible> {
    crate::request::normalize_uri(&mut req);
    if let Some(mut preflight) = state.origins.preflight(&req) {
        state.origins.harden(preflight.headers_mut());
        return Ok(preflight.map(HttpBody::Left));
    }
    let origin = crate::cors::origin(&req).map(str::to_owned);
    let mut response = route(req, &state).await;
    state.origins.answer(response.headers_mut(), origin.as_deref());
    state.origins.harden(response.headers_mut());
    Ok(response)
}

async fn route(req: Request<Incoming>, state: &Arc<AppState>) -> Response<HttpBody> {
    let path = req.uri().path();
    if path != "/ws" {
        state.metrics.http_requests_total.fetch_add(1, Ordering::Relaxed);
    }
    // HTTP/1.1 names its host once (RFC 9112 3.2; HTTP/2 has its `:authority` instead), and
    // no request has two credentials, keys or origins. (A WebSocket handshake's refusal
    // says so itself, with the version the server speaks.)
    let flaw = crate::request::request_head_flaw(&req);
    if let Some(flaw) = flaw.filter(|_| path != "/ws") {
        // Closed as hyper's own refusals of a malformed head are.
        let mut response = ApiError::new(ErrorCode::Malformed, flaw).response();
        let close = hyper::header::HeaderValue::from_static("close");
        response.headers_mut().insert(hyper::header::CONNECTION, close);
        return response.map(HttpBody::Left);
    }
    let serves_clients = state.serves_clients();
    // The engine node answers health, metrics and public market data (to compare with
    // what gateways serve); clients belong on gateway nodes.
    let public = path == "/api/v1/instruments" || path.starts_with("/api/v1/markets/");
    if !serves_clients && !public && !matches!(path, "/healthz" | "/metrics" | "/debug/digest") {
        let message = "this is the engine node: clients connect to a gateway node";
        return ApiError::new(ErrorCode::NotFound, message).response().map(HttpBody::Left);
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
            // A gateway node without NATS, or whose engine node went silent, serves stale
            // market data and refuses orders: a load balancer should send clients to
            // another gateway meanwhile.
            let stale = state.node.as_ref().is_some_and(|n| {
                n.role == crate::cluster::Role::Gateway && n.stats.stale_for_clients()
            });
            let status = if failure.is_some() || stale {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            // A queue nine tenths full refuses orders `engine_busy` any moment: alive, but
            // not keeping up (said, not failed: it drains by itself).
            let engine = &state.engine;
            let depth: Vec<usize> = (0..engine.shards()).map(|s| engine.queue_len(s)).collect();
            let busy = depth
                .iter()
                .enumerate()
                .any(|(s, d)| d * 10 >= engine.queue_capacity(s).max(1) * 9);
            let said = match (&failure, stale, busy) {
                (Some(_), _, _) => "failing",
                (None, true, _) => "stale",
                (None, false, true) => "busy",
                (None, false, false) => "ok",
            };
            let node = state.node.as_ref().map(|n| {
                serde_json::json!({
                    "role": n.role.as_str(),
                    "id": n.id,
                    "nats_connected": n.stats.connected.load(Ordering::Relaxed),
                    // Stale for clients: the engine node silent, or NATS lost.
                    "stale": stale,
                    "commands_applied": n.stats.commands_applied.load(Ordering::Relaxed),
                    "gaps_repaired": n.stats.gaps.load(Ordering::Relaxed),
                })
            });
            json_response(
                status,
                &serde_json::json!({
                    "status": said,
                    "node": node,
                    "engine": { "shards": state.engine.shards(), "commands": c.commands, "events": c.events, "queue_depth": depth },
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
        "/debug/digest" if get => {
            let operator = crate::rest::admin::is_operator(&req, state);
            digest(state, operator).await
        }
        "/metrics" if get => {
            let mut text = state.metrics.render(&state.engine);
            state.ws.links.allowances.render(&mut text);
            if let Some(n) = &state.node {
                n.stats.render(&n.id, &mut text);
            }
            let mut response = Response::new(Full::new(Bytes::from(text)));
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
/// `operator`: the request carries the operator token, and has a turn of its own.
async fn digest(state: &AppState, operator: bool) -> Response<Full<Bytes>> {
    {
        // The digest hashes every balance and resting order on the engine thread: at most
        // one per second (and one more for the operator), so it cannot be used to take the
        // matching thread away, nor an anonymous poller take the operator's turn.
        let gate = &state.digest_gate[usize::from(operator)];
        let mut last = gate.lock().unwrap_or_else(|e| e.into_inner());
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
