//! Binary encoders, one function per message.

use super::*;

/// A book delta.
#[inline]
pub fn book_delta(
    out: &mut Vec<u8>,
    channel: u32,
    seq: u64,
    ts: u64,
    side: Side,
    price: Price,
    qty: Qty,
) {
    put_header(out, MsgType::BookDelta, 0, 24, channel, seq, ts);
    put_side_pad(out, side);
    put_i64(out, price.0);
    put_i64(out, qty.0);
}

/// A best bid/offer.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn bbo(
    out: &mut Vec<u8>,
    channel: u32,
    flags: u8,
    seq: u64,
    ts: u64,
    bid: (Price, Qty),
    ask: (Price, Qty),
) {
    put_header(out, MsgType::Bbo, flags, 32, channel, seq, ts);
    put_i64(out, bid.0 .0);
    put_i64(out, bid.1 .0);
    put_i64(out, ask.0 .0);
    put_i64(out, ask.1 .0);
}

/// A trade.
#[inline]
pub fn trade(out: &mut Vec<u8>, channel: u32, t: &TradeMsg) {
    put_header(out, MsgType::Trade, 0, 40, channel, t.seq, t.ts);
    put_i64(out, t.price.0);
    put_i64(out, t.qty.0);
    put_side_pad(out, t.taker_side);
    out.extend_from_slice(&t.maker_order.to_le_bytes());
    out.extend_from_slice(&t.taker_order.to_le_bytes());
}

/// A book snapshot (depth already applied).
pub fn book_snapshot(out: &mut Vec<u8>, channel: u32, flags: u8, ts: u64, s: &BookSnapshot) {
    let body = 8 + 16 * (s.bids.len() + s.asks.len());
    put_header(out, MsgType::BookSnapshot, flags | FLAG_SNAPSHOT, body, channel, s.seq.0, ts);
    out.extend_from_slice(&(s.bids.len() as u16).to_le_bytes());
    out.extend_from_slice(&(s.asks.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for (p, q) in s.bids.iter().chain(&s.asks) {
        put_i64(out, p.0);
        put_i64(out, q.0);
    }
}

/// Recent trades, oldest first; `seq` is the last trade's (0 if none).
pub fn trades_snapshot(
    out: &mut Vec<u8>,
    channel: u32,
    flags: u8,
    seq: u64,
    ts: u64,
    trades: &[TradeMsg],
) {
    put_header(
        out,
        MsgType::TradesSnapshot,
        flags | FLAG_SNAPSHOT,
        8 + 40 * trades.len(),
        channel,
        seq,
        ts,
    );
    out.extend_from_slice(&(trades.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for t in trades {
        out.extend_from_slice(&t.seq.to_le_bytes());
        out.extend_from_slice(&t.ts.to_le_bytes());
        put_i64(out, t.price.0);
        put_i64(out, t.qty.0);
        put_side_pad(out, t.taker_side);
    }
}

/// A gap notice.
pub fn gap(out: &mut Vec<u8>, channel: u32, ts: u64, first: u64, last: u64) {
    put_header(out, MsgType::Gap, 0, 16, channel, last, ts);
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
}

/// A heartbeat.
pub fn heartbeat(out: &mut Vec<u8>, channel: u32, seq: u64, ts: u64) {
    put_header(out, MsgType::Heartbeat, 0, 0, channel, seq, ts);
}

/// Bytes of one candle: u64 start (ns), i64 open, high, low, close, volume, u64 trades.
pub const CANDLE_BYTES: usize = 56;

/// Appends one candle's body.
pub fn put_candle(out: &mut Vec<u8>, c: &Candle) {
    out.extend_from_slice(&c.start.to_le_bytes());
    for v in [c.open, c.high, c.low, c.close, c.volume] {
        put_i64(out, v);
    }
    out.extend_from_slice(&c.trades.to_le_bytes());
}

/// A candle's new state.
pub fn candle(out: &mut Vec<u8>, channel: u32, seq: u64, ts: u64, c: &Candle) {
    put_header(out, MsgType::Candle, 0, CANDLE_BYTES, channel, seq, ts);
    put_candle(out, c);
}

/// The newest candles, oldest first.
pub fn candles_snapshot(
    out: &mut Vec<u8>,
    channel: u32,
    flags: u8,
    seq: u64,
    ts: u64,
    candles: &[Candle],
) {
    let body = 8 + CANDLE_BYTES * candles.len();
    put_header(out, MsgType::CandlesSnapshot, flags | FLAG_SNAPSHOT, body, channel, seq, ts);
    out.extend_from_slice(&(candles.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for c in candles {
        put_candle(out, c);
    }
}
