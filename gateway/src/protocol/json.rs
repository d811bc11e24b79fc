//! JSON encoders producing the same content as [`bin`], one object per message; a JSON
//! frame is an array of such objects. Prices and quantities are decimal strings at the
//! instrument's precision (exact: no floats anywhere).

use std::fmt::Write as _;

use super::*;

fn head(out: &mut String, t: &str, channel: &str, seq: u64, ts: u64) {
    let _ = write!(out, r#"{{"type":"{t}","channel":"{channel}","seq":{seq},"ts":{ts}"#);
}

/// A book delta.
#[allow(clippy::too_many_arguments)]
pub fn book_delta(
    out: &mut String,
    i: &Instrument,
    channel: &str,
    seq: u64,
    ts: u64,
    side: Side,
    price: Price,
    qty: Qty,
) {
    head(out, "book_delta", channel, seq, ts);
    let _ = write!(
        out,
        r#","side":"{}","price":"{}","qty":"{}"}}"#,
        side.as_str(),
        Fixed(price.0, i.spec.price_precision),
        Fixed(qty.0, i.spec.qty_precision)
    );
}

/// A best bid/offer.
#[allow(clippy::too_many_arguments)]
pub fn bbo(
    out: &mut String,
    i: &Instrument,
    channel: &str,
    flags: u8,
    seq: u64,
    ts: u64,
    bid: (Price, Qty),
    ask: (Price, Qty),
) {
    head(out, "bbo", channel, seq, ts);
    let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
    let (snapshot, resync) = (flags & FLAG_SNAPSHOT != 0, flags & FLAG_RESYNC != 0);
    let _ = write!(
        out,
        r#","snapshot":{snapshot},"resync":{resync},"bid_price":"{}","bid_qty":"{}","ask_price":"{}","ask_qty":"{}"}}"#,
        Fixed(bid.0 .0, pp),
        Fixed(bid.1 .0, qp),
        Fixed(ask.0 .0, pp),
        Fixed(ask.1 .0, qp)
    );
}

/// A trade.
pub fn trade(out: &mut String, i: &Instrument, channel: &str, t: &TradeMsg) {
    head(out, "trade", channel, t.seq, t.ts);
    let _ = write!(
        out,
        r#","price":"{}","qty":"{}","taker_side":"{}","maker_order_id":{},"taker_order_id":{}}}"#,
        Fixed(t.price.0, i.spec.price_precision),
        Fixed(t.qty.0, i.spec.qty_precision),
        t.taker_side.as_str(),
        t.maker_order,
        t.taker_order
    );
}

fn levels(out: &mut String, i: &Instrument, levels: &[(Price, Qty)]) {
    out.push('[');
    for (n, (p, q)) in levels.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"["{}","{}"]"#,
            Fixed(p.0, i.spec.price_precision),
            Fixed(q.0, i.spec.qty_precision)
        );
    }
    out.push(']');
}

/// A book snapshot.
pub fn book_snapshot(
    out: &mut String,
    i: &Instrument,
    channel: &str,
    resync: bool,
    ts: u64,
    s: &BookSnapshot,
) {
    head(out, "book_snapshot", channel, s.seq.0, ts);
    let _ = write!(out, r#","resync":{resync},"bids":"#);
    levels(out, i, &s.bids);
    out.push_str(r#","asks":"#);
    levels(out, i, &s.asks);
    out.push('}');
}

/// Recent trades.
pub fn trades_snapshot(
    out: &mut String,
    i: &Instrument,
    channel: &str,
    resync: bool,
    seq: u64,
    ts: u64,
    trades: &[TradeMsg],
) {
    let list = ("trades_snapshot", "trades", channel, resync, seq, ts);
    snapshot_list(out, list, trades, |out, t| {
        let _ = write!(
            out,
            r#"{{"seq":{},"ts":{},"price":"{}","qty":"{}","taker_side":"{}"}}"#,
            t.seq,
            t.ts,
            Fixed(t.price.0, i.spec.price_precision),
            Fixed(t.qty.0, i.spec.qty_precision),
            t.taker_side.as_str()
        );
    });
}

/// A snapshot that is a list: type, field, channel, resync, seq, ts; then the items.
fn snapshot_list<T>(
    out: &mut String,
    (t, field, channel, resync, seq, ts): (&str, &str, &str, bool, u64, u64),
    items: &[T],
    mut each: impl FnMut(&mut String, &T),
) {
    head(out, t, channel, seq, ts);
    let _ = write!(out, r#","resync":{resync},"{field}":["#);
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push_str("]}");
}

/// A gap notice.
pub fn gap(out: &mut String, channel: &str, ts: u64, first: u64, last: u64) {
    head(out, "gap", channel, last, ts);
    let _ = write!(out, r#","from_seq":{first},"to_seq":{last}}}"#);
}

/// A heartbeat.
pub fn heartbeat(out: &mut String, channel: &str, seq: u64, ts: u64) {
    head(out, "heartbeat", channel, seq, ts);
    out.push('}');
}

/// One candle as an object (the shape of the REST candles endpoint's).
pub fn put_candle(out: &mut String, i: &Instrument, c: &Candle) {
    let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
    let _ = write!(
        out,
        r#"{{"start":{},"open":"{}","high":"{}","low":"{}","close":"{}","volume":"{}","trades":{}}}"#,
        c.start,
        Fixed(c.open, pp),
        Fixed(c.high, pp),
        Fixed(c.low, pp),
        Fixed(c.close, pp),
        Fixed(c.volume, qp),
        c.trades
    );
}

/// A candle's new state.
pub fn candle(out: &mut String, i: &Instrument, channel: &str, seq: u64, ts: u64, c: &Candle) {
    head(out, "candle", channel, seq, ts);
    out.push_str(r#","candle":"#);
    put_candle(out, i, c);
    out.push('}');
}

/// The newest candles, oldest first.
pub fn candles_snapshot(
    out: &mut String,
    i: &Instrument,
    channel: &str,
    resync: bool,
    seq: u64,
    ts: u64,
    candles: &[Candle],
) {
    let list = ("candles_snapshot", "candles", channel, resync, seq, ts);
    snapshot_list(out, list, candles, |out, c| put_candle(out, i, c));
}
