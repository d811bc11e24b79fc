//! Order entry and the caller's orders, fills and positions.
//!
//! `POST /api/v1/orders` answers with the engine's whole verdict on the order: `201` with
//! the order as its command left it (a market order that filled says `filled`), `422`
//! with the engine's reason when rejected. An `Idempotency-Key` makes a retry safe, also
//! across restarts (the key is journaled with the order, see [`crate::trading`]): the same
//! key for the same order answers that order as it stands now; the same key for another
//! order gets `422 idempotency_key_reused`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tickgate_engine::types::format_fixed;
use tickgate_engine::{AccountId, Instrument, InstrumentId, OrderId};

use super::{authorize, invalid_parameter, number_param};
use crate::error::{ApiError, ErrorCode};
use crate::orders::Status;
use crate::reply::json_response;
use crate::state::AppState;
use crate::trading::{NewOrderRequest, ReplaceRequest};

use crate::views::{cancel_all_json, fill_json, order_in, order_json};

fn instrument(state: &AppState, id: tickgate_engine::InstrumentId) -> Option<&Instrument> {
    state.engine.instruments().get(id.0 as usize)
}

/// `POST /api/v1/orders`.
pub async fn place(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match authorize(&req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let key = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) => Some(k.to_string()),
        Some(Err(_)) => {
            return invalid_parameter("Idempotency-Key must be visible ASCII").response()
        }
    };
    if let Err(e) = super::reject_non_json(&req) {
        return e.response();
    }
    let body = match super::read_body(req.into_body(), state.body_timeout).await {
        Ok(body) => body,
        Err(e) => return e.response(),
    };
    let request: NewOrderRequest = match super::parse_json(body) {
        Ok(b) => b,
        Err(e) => {
            let message = format!("invalid order: {e}");
            return ApiError::new(ErrorCode::Malformed, &message).response();
        }
    };
    match state.ws.trading.place(AccountId(claims.acc), &request, key.as_deref()).await {
        Ok(order) => {
            json_response(StatusCode::CREATED, &order_in(&order, state.engine.instruments()))
        }
        Err(e) => e.response(),
    }
}

fn parse_order_id(id: &str) -> Option<OrderId> {
    id.parse().ok().map(OrderId)
}

/// `GET /api/v1/orders/{id}`.
pub async fn get_one<B>(req: &Request<B>, state: &AppState, id: &str) -> Response<Full<Bytes>> {
    let claims = match authorize(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    // Another user's order answers exactly like a missing one; on a gateway node, one
    // another gateway acknowledged a moment ago is looked for again once caught up.
    let found = match parse_order_id(id) {
        Some(id) => state.ws.trading.order_caught_up(AccountId(claims.acc), id).await,
        None => None,
    };
    match found.and_then(|o| instrument(state, o.instrument).map(|i| order_json(&o, i))) {
        Some(body) => json_response(StatusCode::OK, &body),
        None => ApiError::new(ErrorCode::UnknownOrder, "no such order").response(),
    }
}

/// `DELETE /api/v1/orders/{id}`. Not counted against the user's request rate, as no
/// cancel is: a user who spent it must still be able to take risk off.
pub async fn cancel<B>(req: &Request<B>, state: &AppState, id: &str) -> Response<Full<Bytes>> {
    let claims = match super::authenticate(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let Some(id) = parse_order_id(id) else {
        return ApiError::new(ErrorCode::UnknownOrder, "no such order").response();
    };
    match state.ws.trading.cancel(AccountId(claims.acc), id).await {
        Ok(order) => json_response(StatusCode::OK, &order_in(&order, state.engine.instruments())),
        Err(e) => e.response(),
    }
}

/// `DELETE /api/v1/orders?symbol=`: cancels every open order of the caller (of one
/// instrument with `symbol`). `200` with the orders canceled and those that could not be
/// (`not_canceled`, each with its error code), but `503` when none could be queued for
/// one reason of the server's ([`crate::trading::CancelAllOutcome::refused_whole`]). Not
/// counted against the user's request rate (see [`cancel`]).
pub async fn cancel_all<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match super::authenticate(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let instrument = match symbol_param(req, state) {
        Ok(i) => i,
        Err(e) => return e.response(),
    };
    let outcome = state.ws.trading.cancel_all(AccountId(claims.acc), instrument).await;
    if let Some(e) = outcome.refused_whole() {
        return e.response();
    }
    json_response(StatusCode::OK, &cancel_all_json(&outcome, state.engine.instruments()))
}

/// `PATCH /api/v1/orders/{id}` with `{"price": "...", "qty": "..."}` (either or both):
/// replace. Lowering only the quantity keeps the order's place in the queue.
pub async fn replace(req: Request<Incoming>, state: &AppState, id: &str) -> Response<Full<Bytes>> {
    let claims = match authorize(&req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let Some(id) = parse_order_id(id) else {
        return ApiError::new(ErrorCode::UnknownOrder, "no such order").response();
    };
    let request: ReplaceRequest = match super::json_body(req, state).await {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    match state.ws.trading.replace(AccountId(claims.acc), id, &request).await {
        Ok(order) => json_response(StatusCode::OK, &order_in(&order, state.engine.instruments())),
        Err(e) => e.response(),
    }
}

/// `symbol`, `cursor` and `limit` of a list request.
struct Page {
    symbol: Option<tickgate_engine::InstrumentId>,
    before: Option<u64>,
    limit: usize,
}

/// The `symbol` query parameter, if given: a known instrument.
fn symbol_param<B>(req: &Request<B>, state: &AppState) -> Result<Option<InstrumentId>, ApiError> {
    match crate::request::query_param(req.uri().query(), "symbol") {
        None => Ok(None),
        Some(s) => match state.engine.instrument_by_symbol(s) {
            Some(i) => Ok(Some(i.id)),
            None => Err(ApiError::new(ErrorCode::NoSuchMarket, format!("no instrument `{s}`"))),
        },
    }
}

fn page<B>(req: &Request<B>, state: &AppState) -> Result<Page, ApiError> {
    let query = req.uri().query();
    let symbol = symbol_param(req, state)?;
    let before =
        // `cursor=` (empty) is the first page, as if absent.
        match crate::request::query_param(query, "cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                c.parse()
                    .map_err(|_| invalid_parameter("cursor must be a value from next_cursor"))?,
            ),
        };
    let limit = number_param(req, "limit", 100, 1..=1000).map_err(|m| invalid_parameter(&m))?;
    Ok(Page { symbol, before, limit })
}

/// `GET /api/v1/orders?status=open|closed&symbol=&cursor=&limit=`: newest first.
pub fn list<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match authorize(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let want_open = match crate::request::query_param(req.uri().query(), "status") {
        None => None,
        Some("open") => Some(true),
        Some("closed") => Some(false),
        Some(_) => return invalid_parameter("status is open or closed").response(),
    };
    let Page { symbol, before, limit } = match page(req, state) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let orders = state.orders.orders(
        AccountId(claims.acc),
        before.map(OrderId),
        |o| {
            want_open.is_none_or(|open| (o.status == Status::Open) == open)
                && symbol.is_none_or(|s| o.instrument == s)
        },
        limit,
    );
    let next = (orders.len() == limit).then(|| orders.last().map(|o| o.id.0)).flatten();
    let list: Vec<Value> = orders
        .iter()
        .filter_map(|o| instrument(state, o.instrument).map(|i| order_json(o, i)))
        .collect();
    json_response(StatusCode::OK, &json!({ "orders": list, "next_cursor": next }))
}

/// `GET /api/v1/fills?symbol=&cursor=&limit=`: newest first (engine time); a cursor (the
/// last fill's id) never repeats or skips a fill, however many arrive meanwhile (they are
/// newer).
pub fn fills<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match authorize(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let Page { symbol, before, limit } = match page(req, state) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let fills = state.orders.fills(AccountId(claims.acc), before, symbol, limit);
    let next = (fills.len() == limit).then(|| fills.last().map(|f| f.id)).flatten();
    let list: Vec<Value> = fills
        .iter()
        .filter_map(|f| instrument(state, f.instrument).map(|i| fill_json(f, i)))
        .collect();
    json_response(StatusCode::OK, &json!({ "fills": list, "next_cursor": next }))
}

/// `GET /api/v1/positions`: net quantity (bought minus sold) per instrument, from the
/// engine's ledger as published after every batch (so it survives restarts and counts
/// every fill, however old); instruments never traded are left out.
pub fn positions<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    let claims = match authorize(req, state) {
        Ok(c) => c,
        Err(e) => return e.response(),
    };
    let engine = &state.engine;
    let mut net = vec![0i64; engine.instruments().len()];
    for shard in 0..engine.shards() {
        let Some(published) = engine.published_account(shard, AccountId(claims.acc)) else {
            return ApiError::new(ErrorCode::UnknownAccount, "the account does not exist")
                .response();
        };
        // Each instrument lives on one shard; the others publish zero for it.
        for (n, q) in net.iter_mut().zip(published.positions) {
            *n = n.saturating_add(q.0);
        }
    }
    let list: Vec<Value> = net
        .iter()
        .enumerate()
        .filter(|(_, q)| **q != 0)
        .filter_map(|(id, qty)| {
            let i = instrument(state, InstrumentId(id as u32))?;
            Some(
                json!({ "symbol": i.spec.symbol, "qty": format_fixed(*qty, i.spec.qty_precision) }),
            )
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "positions": list }))
}
