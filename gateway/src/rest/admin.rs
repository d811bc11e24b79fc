//! Operator endpoints, authenticated by `--admin-token`: halt and resume trading in an
//! instrument. The change is a journaled engine command; every user's SSE stream gets a
//! `system` notice.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tickgate_engine::{CommandKind, TradingStatus};

use crate::error::{ApiError, ErrorCode};
use crate::reply::json_response;
use crate::state::AppState;

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the operator token (`--admin-token`, when set).
pub fn is_operator<B>(req: &Request<B>, state: &AppState) -> bool {
    check(req, state).is_ok()
}

/// The 401/403 answer unless the request carries the operator token.
fn check<B>(req: &Request<B>, state: &AppState) -> Result<(), ApiError> {
    if req.headers().get(AUTHORIZATION).is_none() {
        return Err(super::unauthorized("operator token required"));
    }
    let Some(expected) = &state.admin_token else {
        let message = "operator endpoints are off (start with --admin-token)";
        return Err(ApiError::new(ErrorCode::AdminDisabled, message));
    };
    let given = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let given = crate::request::bearer(given).unwrap_or_default();
    if same(given.as_bytes(), expected.as_bytes()) {
        return Ok(());
    }
    Err(super::unauthorized("operator token required"))
}

/// `POST /api/v1/admin/instruments/{symbol}/halt` and `.../resume`.
pub async fn trading_status<B>(
    req: &Request<B>,
    state: &AppState,
    symbol: &str,
    halt: bool,
) -> Response<Full<Bytes>> {
    if let Err(e) = check(req, state) {
        return e.response();
    }
    let Some(instrument) = state.engine.instrument_by_symbol(symbol) else {
        return ApiError::new(ErrorCode::NoSuchMarket, format!("no instrument `{symbol}`"))
            .response();
    };
    // The state before, for the notice: users hear of a change, not of a repeated command
    // (which is still sent: the engine's state is the engine's to say).
    let (engine, id) = (state.engine.clone(), instrument.id);
    let before =
        tokio::task::spawn_blocking(move || engine.is_halted(id)).await.ok().and_then(Result::ok);
    let command = CommandKind::Status(TradingStatus { instrument: instrument.id, halted: halt });
    if let Err(e) = state.ws.trading.route.submit(command).await {
        return crate::trading::route_error(e).response();
    }
    // Answered after the command: confirms the engine applied (and journaled) it. A
    // gateway node's replica applies it once the engine node hands it over.
    let mut halted = !halt;
    for _ in 0..40 {
        let (engine, id) = (state.engine.clone(), instrument.id);
        halted = match tokio::task::spawn_blocking(move || engine.is_halted(id)).await {
            Ok(Ok(h)) => h,
            _ => return ApiError::new(ErrorCode::EngineUnavailable, "no answer").response(),
        };
        if halted == halt || !state.engine.is_replica() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let status = if halted { "halted" } else { "trading" };
    let notice = json!({
        "notice": if halted { "instrument_halted" } else { "instrument_resumed" },
        "symbol": instrument.spec.symbol,
        "message": if halted {
            format!("trading in {} is halted", instrument.spec.symbol)
        } else {
            format!("trading in {} has resumed", instrument.spec.symbol)
        },
    });
    if before != Some(halted) {
        state.alerts.publish_system(&notice);
        // Every user on every node.
        if let Some((link, node)) =
            state.node.as_ref().and_then(|n| Some((n.link.as_ref()?, &n.instance)))
        {
            crate::cluster::alerts::broadcast_system(link, node, &notice).await;
        }
    }
    json_response(StatusCode::OK, &json!({ "symbol": instrument.spec.symbol, "status": status }))
}
