//! Price alerts: `POST /api/v1/alerts`, `GET /api/v1/alerts`, `DELETE /api/v1/alerts/{id}`.
//! They fire into the user's SSE stream (`GET /api/v1/alerts/stream`, see [`crate::sse`]).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tickgate_engine::types::format_fixed;
use tickgate_engine::AccountId;

use super::{authorize, invalid_parameter, json_body};
use crate::alerts::{AddError, Condition, PriceAlert, ALERTS_PER_USER_MAX};
pub use crate::cluster::alerts::{AlertOp, NewAlert};
use crate::error::{ApiError, ErrorCode};
use crate::reply::json_response;
use crate::state::AppState;

/// Carries out `op` for `account`: here, or on the engine node when this is a gateway node.
async fn perform(state: &AppState, account: AccountId, op: AlertOp) -> Response<Full<Bytes>> {
    match state.node.as_ref().and_then(|n| n.link.as_ref()) {
        Some(link) => crate::cluster::alerts::forward(link, account, op).await,
        None => apply(state, account, op),
    }
}

/// Carries out `op` for `account` on this node's alerts.
pub fn apply(state: &AppState, account: AccountId, op: AlertOp) -> Response<Full<Bytes>> {
    match op {
        AlertOp::Create(body) => add(state, account, &body),
        AlertOp::List => {
            let alerts: Vec<Value> =
                state.alerts.alerts(account).iter().map(|a| alert_json(a, state)).collect();
            json_response(StatusCode::OK, &json!({ "alerts": alerts }))
        }
        AlertOp::Delete(id) => {
            if id.parse().is_ok_and(|n| state.alerts.remove_alert(account, n)) {
                json_response(StatusCode::OK, &json!({ "deleted": id }))
            } else {
                // Another user's alert answers exactly like a missing one.
                ApiError::new(ErrorCode::UnknownAlert, "no such alert").response()
            }
        }
    }
}

fn alert_json(a: &PriceAlert, state: &AppState) -> Value {
    let i = state.engine.instruments().get(a.instrument.0 as usize);
    json!({
        "id": a.id,
        "symbol": i.map(|i| i.spec.symbol.as_str()),
        "condition": a.condition.as_str(),
        "price": i.map(|i| format_fixed(a.price, i.spec.price_precision)),
        "repeat": a.repeat,
    })
}

/// `POST /api/v1/alerts` with `{"symbol", "condition": "above"|"below"|"crosses", "price",
/// "repeat": false}`.
pub async fn create(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match authorize(&req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let body: NewAlert = match json_body(req, state).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    perform(state, AccountId(claims.acc), AlertOp::Create(body)).await
}

fn add(state: &AppState, account: AccountId, body: &NewAlert) -> Response<Full<Bytes>> {
    let Some(instrument) = state.engine.instrument_by_symbol(&body.symbol) else {
        let message = format!("no instrument `{}`", body.symbol);
        return ApiError::new(ErrorCode::UnknownSymbol, &message).response();
    };
    let Some(condition) = Condition::parse(&body.condition) else {
        return invalid_parameter("condition is above, below or crosses").response();
    };
    let spec = &instrument.spec;
    let price = match crate::trading::parse_price(instrument, &body.price) {
        // Outside the band nothing trades, and no mid gets there: it could never fire.
        Ok(p) if p < spec.price_min.0 || p > spec.price_max.0 => {
            let (pp, fixed) = (spec.price_precision, tickgate_engine::types::format_fixed);
            let message = format!(
                "an alert price is within the instrument's price band ({} to {})",
                fixed(spec.price_min.0, pp),
                fixed(spec.price_max.0, pp)
            );
            let code = ErrorCode::Rejected(tickgate_engine::RejectReason::PriceOutOfBand);
            return ApiError::new(code, message).response();
        }
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    match state.alerts.add_alert(account, instrument, condition, price, body.repeat) {
        Ok(alert) => json_response(StatusCode::CREATED, &alert_json(&alert, state)),
        Err(AddError::TooMany) => ApiError::new(
            ErrorCode::LimitExceeded,
            format!("at most {ALERTS_PER_USER_MAX} alerts per user"),
        )
        .response(),
        Err(AddError::UnknownUser) => {
            ApiError::new(ErrorCode::UnknownAccount, "no alert history for this user").response()
        }
    }
}

/// `GET /api/v1/alerts`: the caller's alerts, oldest first.
pub async fn list<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    match authorize(req, state) {
        Ok(claims) => perform(state, AccountId(claims.acc), AlertOp::List).await,
        Err(e) => e.response(),
    }
}

/// `DELETE /api/v1/alerts/{id}`.
pub async fn delete<B>(req: &Request<B>, state: &AppState, id: &str) -> Response<Full<Bytes>> {
    match authorize(req, state) {
        Ok(claims) => perform(state, AccountId(claims.acc), AlertOp::Delete(id.to_string())).await,
        Err(e) => e.response(),
    }
}
