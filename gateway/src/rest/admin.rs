//! Operator endpoints, authenticated by `--admin-token`: halt and resume trading in an
//! instrument. The change is a journaled engine command; every user's SSE stream gets a
//! `system` notice.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tickgate_engine::{CommandKind, TradingStatus};

use crate::http::{json_error, json_response, AppState};

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 401/403 answer unless the request carries the operator token.
fn check<B>(req: &Request<B>, state: &AppState) -> Option<Response<Full<Bytes>>> {
    if req.headers().get(AUTHORIZATION).is_none() {
        return Some(super::unauthorized("operator token required"));
    }
    let Some(expected) = &state.admin_token else {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "operator endpoints are off (start with --admin-token)",
        ));
    };
    let given = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let given = super::bearer(given).unwrap_or_default();
    (!same(given.as_bytes(), expected.as_bytes()))
        .then(|| super::unauthorized("operator token required"))
}

/// `POST /api/v1/admin/instruments/{symbol}/halt` and `.../resume`.
pub async fn trading_status<B>(
    req: &Request<B>,
    state: &AppState,
    symbol: &str,
    halt: bool,
) -> Response<Full<Bytes>> {
    if let Some(response) = check(req, state) {
        return response;
    }
    let Some(instrument) = state.engine.instrument_by_symbol(symbol) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "unknown_symbol",
            &format!("no instrument `{symbol}`"),
        );
    };
    let command = CommandKind::Status(TradingStatus { instrument: instrument.id, halted: halt });
    if let Err(e) = state.engine.submit(command) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", &e.to_string());
    }
    // Answered after the command: confirms the engine applied (and journaled) it.
    let (engine, id) = (state.engine.clone(), instrument.id);
    let halted = match tokio::task::spawn_blocking(move || engine.is_halted(id)).await {
        Ok(Ok(h)) => h,
        _ => return json_error(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", "no answer"),
    };
    let status = if halted { "halted" } else { "trading" };
    state.alerts.publish_system(&json!({
        "notice": if halted { "instrument_halted" } else { "instrument_resumed" },
        "symbol": instrument.spec.symbol,
        "message": format!("trading in {} is {status}", instrument.spec.symbol),
    }));
    json_response(StatusCode::OK, &json!({ "symbol": instrument.spec.symbol, "status": status }))
}
