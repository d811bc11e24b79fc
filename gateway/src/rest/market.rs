//! Public market data over REST: instruments, book snapshots, recent trades and candles.
//! The book
//! carries the same sequence as the WebSocket `book.<SYM>` deltas, so a client can join a
//! REST snapshot with the delta stream (though subscribing gets the snapshot in-band).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tickgate_engine::types::format_fixed;
use tickgate_engine::Instrument;

use super::{cached, invalid_parameter, number_param};
use crate::error::{ApiError, ErrorCode};
use crate::protocol::{SNAPSHOT_DEPTH_MAX, TRADES_KEPT};
use crate::reply::json_response;
use crate::state::AppState;

fn instrument_json(i: &Instrument, assets: &[tickgate_engine::Asset]) -> Value {
    let s = &i.spec;
    let asset = |id: tickgate_engine::AssetId| {
        assets.get(usize::from(id.0)).map_or_else(String::new, |a| a.symbol.clone())
    };
    let (pp, qp) = (s.price_precision, s.qty_precision);
    let channels: Vec<String> = ["book", "bbo", "trades"]
        .iter()
        .map(|k| format!("{k}.{}", s.symbol))
        .chain(
            crate::candles::INTERVALS
                .iter()
                .map(|(name, _)| format!("candles.{}.{name}", s.symbol)),
        )
        .collect();
    json!({
        "symbol": s.symbol,
        "id": i.id.0,
        "base": asset(s.base),
        "quote": asset(s.quote),
        "price_precision": pp,
        "qty_precision": qp,
        "tick_size": format_fixed(s.tick_size.0, pp),
        "lot_size": format_fixed(s.lot_size.0, qp),
        "price_min": format_fixed(s.price_min.0, pp),
        "price_max": format_fixed(s.price_max.0, pp),
        "qty_max": format_fixed(s.qty_max.0, qp),
        "channels": channels,
    })
}

/// `GET /api/v1/instruments`: the static instrument table (cacheable for a minute).
pub fn instruments<B>(req: &Request<B>, state: &AppState) -> Response<Full<Bytes>> {
    let engine = &state.engine;
    // The table is fixed for the life of the process: its size and version tag it.
    let tag = format!("instruments-v1-{}", engine.instruments().len());
    cached(req, &tag, "public, max-age=60", || {
        let list: Vec<Value> =
            engine.instruments().iter().map(|i| instrument_json(i, engine.assets())).collect();
        json!({ "instruments": list })
    })
}

fn unknown_symbol(symbol: &str) -> Response<Full<Bytes>> {
    ApiError::new(ErrorCode::NoSuchMarket, format!("no instrument `{symbol}`")).response()
}

/// `GET /api/v1/markets/{sym}/book?depth=N`: top N levels per side with the book sequence.
pub fn book<B>(req: &Request<B>, state: &AppState, symbol: &str) -> Response<Full<Bytes>> {
    let Some(channel) = state.ws.directory.get(&format!("book.{symbol}")) else {
        return unknown_symbol(symbol);
    };
    let depth = match number_param(req, "depth", 50, 1..=SNAPSHOT_DEPTH_MAX) {
        Ok(d) => d,
        Err(message) => return invalid_parameter(&message).response(),
    };
    let (snapshot, ts) = channel.book(depth);
    let i = &channel.instrument;
    let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
    let levels = |side: &[(tickgate_engine::Price, tickgate_engine::Qty)]| {
        side.iter()
            .map(|(p, q)| json!([format_fixed(p.0, pp), format_fixed(q.0, qp)]))
            .collect::<Vec<_>>()
    };
    // Valid until the next delta: revalidate every time, answer 304 while unchanged.
    let tag = format!("book-{}-{}-{depth}", i.id.0, snapshot.seq.0);
    cached(req, &tag, "no-cache", || {
        json!({
            "symbol": i.spec.symbol,
            "seq": snapshot.seq.0,
            "ts": ts,
            "bids": levels(&snapshot.bids),
            "asks": levels(&snapshot.asks),
        })
    })
}

/// `GET /api/v1/markets/{sym}/trades?limit=N`: the most recent trades, newest first.
pub fn trades<B>(req: &Request<B>, state: &AppState, symbol: &str) -> Response<Full<Bytes>> {
    let Some(channel) = state.ws.directory.get(&format!("trades.{symbol}")) else {
        return unknown_symbol(symbol);
    };
    let limit = match number_param(req, "limit", 100, 1..=TRADES_KEPT) {
        Ok(l) => l,
        Err(message) => return invalid_parameter(&message).response(),
    };
    let (trades, last_seq) = channel.recent_trades(limit);
    let i = &channel.instrument;
    let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
    let tag = format!("trades-{}-{last_seq}-{limit}", i.id.0);
    cached(req, &tag, "no-cache", || {
        let list: Vec<Value> = trades
            .iter()
            .map(|t| {
                json!({
                    "seq": t.seq,
                    "ts": t.ts,
                    "price": format_fixed(t.price.0, pp),
                    "qty": format_fixed(t.qty.0, qp),
                    "taker_side": t.taker_side.as_str(),
                })
            })
            .collect();
        json!({ "symbol": i.spec.symbol, "seq": last_seq, "trades": list })
    })
}

/// `GET /api/v1/markets/{sym}/candles?interval=1s|1m|5m|1h&limit=N`: the newest `limit`
/// candles (default 100, at most 1,000), oldest first; an interval without trades has no
/// candle.
pub fn candles<B>(req: &Request<B>, state: &AppState, symbol: &str) -> Response<Full<Bytes>> {
    let Some(i) = state.engine.instrument_by_symbol(symbol) else {
        return unknown_symbol(symbol);
    };
    let name = crate::request::query_param(req.uri().query(), "interval").unwrap_or("1m");
    let Some(interval) = crate::candles::INTERVALS.iter().position(|(n, _)| *n == name) else {
        return invalid_parameter("interval is 1s, 1m, 5m or 1h").response();
    };
    let limit = match number_param(req, "limit", 100, 1..=crate::candles::CANDLES_KEPT) {
        Ok(l) => l,
        Err(message) => return invalid_parameter(&message).response(),
    };
    let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
    let list: Vec<Value> = state
        .candles
        .candles(i.id.0 as usize, interval, limit)
        .iter()
        .map(|c| {
            json!({
                "start": c.start,
                "open": format_fixed(c.open, pp),
                "high": format_fixed(c.high, pp),
                "low": format_fixed(c.low, pp),
                "close": format_fixed(c.close, pp),
                "volume": format_fixed(c.volume, qp),
                "trades": c.trades,
            })
        })
        .collect();
    let body = json!({ "symbol": i.spec.symbol, "interval": name, "candles": list });
    let mut response = json_response(StatusCode::OK, &body);
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
