//! Wire protocol v1 (see `docs/PROTOCOL.md`): channel names and ids, the binary market-data
//! messages and their JSON twins, and WebSocket frame headers for pre-framed server frames.
//!
//! Binary messages are a fixed 24-byte little-endian header followed by a fixed-layout
//! body; a WebSocket binary frame carries one or more messages back to back. Server frames
//! are unmasked, so a frame encoded once can be written unchanged to every subscriber.

use std::fmt::Write as _;

use tickgate_engine::l2::Level;
use tickgate_engine::types::Fixed;
use tickgate_engine::{BookSnapshot, Instrument, InstrumentId, Price, Qty, Side};

use crate::candles::Candle;

/// Market-data encoding a connection asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Binary frames (default).
    Binary,
    /// JSON text frames (`?format=json`), for debugging.
    Json,
}

/// Protocol version announced in the welcome message.
pub const PROTOCOL_VERSION: u32 = 1;
/// Size of every binary message header.
pub const HEADER_BYTES: usize = 24;

/// Binary message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    /// Full (or top-N) book: body = u16 bids, u16 asks, u32 0, then (i64 price, i64 qty)
    /// per level, bids best first, then asks best first.
    BookSnapshot = 1,
    /// One level's new aggregate quantity: body = u8 side, 7 x 0, i64 price, i64 qty.
    BookDelta = 2,
    /// Best bid and offer: body = i64 bid price, i64 bid qty, i64 ask price, i64 ask qty.
    Bbo = 3,
    /// A trade: body = i64 price, i64 qty, u8 taker side, 7 x 0, u64 maker order, u64
    /// taker order.
    Trade = 4,
    /// Recent trades on subscribe: body = u32 count, u32 0, then per trade u64 seq, u64 ts,
    /// i64 price, i64 qty, u8 taker side, 7 x 0.
    TradesSnapshot = 5,
    /// Messages the client will never get: body = u64 first missed seq, u64 last missed.
    Gap = 6,
    /// A quiet channel is alive; `seq` is its last sequence. No body.
    Heartbeat = 7,
    /// A candle's state after this pass's trades: body = one candle (see
    /// [`bin::put_candle`]). Replaces the candle with the same start, or appends.
    Candle = 8,
    /// Newest candles on subscribe: body = u32 count, u32 0, then `count` candles, oldest
    /// first.
    CandlesSnapshot = 9,
}

impl MsgType {
    /// Inverse of `as u8`.
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            1 => MsgType::BookSnapshot,
            2 => MsgType::BookDelta,
            3 => MsgType::Bbo,
            4 => MsgType::Trade,
            5 => MsgType::TradesSnapshot,
            6 => MsgType::Gap,
            7 => MsgType::Heartbeat,
            8 => MsgType::Candle,
            9 => MsgType::CandlesSnapshot,
            _ => return None,
        })
    }
}

/// Header flag: this snapshot replaces what the client had (it fell behind).
pub const FLAG_RESYNC: u8 = 1;
/// Header flag: the message is a snapshot (also set on the BBO sent on subscribe).
pub const FLAG_SNAPSHOT: u8 = 2;

/// The public channel kinds per instrument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// `book.<SYM>`: L2 snapshot then deltas; conflated for slow clients.
    Book = 1,
    /// `bbo.<SYM>`: best bid/offer; conflated for slow clients.
    Bbo = 2,
    /// `trades.<SYM>`: every trade; never silently dropped (gap notices).
    Trades = 3,
    /// `candles.<SYM>.1s`: candles snapshot, then each changed candle; conflated.
    Candles1s = 4,
    /// `candles.<SYM>.1m`.
    Candles1m = 5,
    /// `candles.<SYM>.5m`.
    Candles5m = 6,
    /// `candles.<SYM>.1h`.
    Candles1h = 7,
}

impl ChannelKind {
    /// Every kind.
    pub const ALL: [ChannelKind; 7] = [
        ChannelKind::Book,
        ChannelKind::Bbo,
        ChannelKind::Trades,
        ChannelKind::Candles1s,
        ChannelKind::Candles1m,
        ChannelKind::Candles5m,
        ChannelKind::Candles1h,
    ];

    /// Name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            ChannelKind::Book => "book",
            ChannelKind::Bbo => "bbo",
            ChannelKind::Trades => "trades",
            _ => "candles",
        }
    }

    /// The channel's name for `symbol`: `book.BTC-USD`, `candles.BTC-USD.1m`.
    pub fn name(self, symbol: &str) -> String {
        match self.interval() {
            Some(n) => format!("candles.{symbol}.{}", crate::candles::INTERVALS[n].0),
            None => format!("{}.{symbol}", self.prefix()),
        }
    }

    /// For a candles kind, its interval (an index into [`crate::candles::INTERVALS`]).
    pub fn interval(self) -> Option<usize> {
        (self as usize).checked_sub(ChannelKind::Candles1s as usize)
    }

    /// Parses a prefix.
    pub fn from_prefix(prefix: &str) -> Option<Self> {
        match prefix {
            "book" => Some(ChannelKind::Book),
            "bbo" => Some(ChannelKind::Bbo),
            "trades" => Some(ChannelKind::Trades),
            "candles" => Some(ChannelKind::Candles1s),
            _ => None,
        }
    }
}

/// First channel id of the candles channels (below it: `instrument * 4 + kind`).
pub const CANDLES_CHANNEL_BASE: u32 = 1 << 16;

/// Channel id on the wire, stable for a given instrument table: `instrument * 4 + kind`
/// for book (1), bbo (2) and trades (3); `65536 + instrument * 4 + interval` for candles
/// (interval 0 = 1s, 1 = 1m, 2 = 5m, 3 = 1h).
pub fn channel_id(instrument: InstrumentId, kind: ChannelKind) -> u32 {
    match kind.interval() {
        Some(n) => CANDLES_CHANNEL_BASE + instrument.0 * 4 + n as u32,
        None => instrument.0 * 4 + kind as u32,
    }
}

/// Appends the 24-byte message header.
#[inline]
pub fn put_header(
    out: &mut Vec<u8>,
    t: MsgType,
    flags: u8,
    body: usize,
    channel: u32,
    seq: u64,
    ts: u64,
) {
    debug_assert!(body <= usize::from(u16::MAX), "bodies are bounded by the snapshot depth cap");
    out.push(t as u8);
    out.push(flags);
    out.extend_from_slice(&(body as u16).to_le_bytes());
    out.extend_from_slice(&channel.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
}

#[inline]
fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
fn put_side_pad(out: &mut Vec<u8>, side: Side) {
    out.extend_from_slice(&[side.as_u8(), 0, 0, 0, 0, 0, 0, 0]);
}

/// Snapshot depth cap: keeps a snapshot message body under 64 KiB.
pub const SNAPSHOT_DEPTH_MAX: usize = 1000;
/// Trades sent in the snapshot on subscribe.
pub const RECENT_TRADES: usize = 32;
/// Trades kept per instrument (for the snapshot and `GET /api/v1/markets/{sym}/trades`).
pub const TRADES_KEPT: usize = 1000;

/// A trade as the gateway keeps and sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TradeMsg {
    /// Trades channel sequence.
    pub seq: u64,
    /// Engine timestamp.
    pub ts: u64,
    /// Price.
    pub price: Price,
    /// Quantity.
    pub qty: Qty,
    /// Taker side.
    pub taker_side: Side,
    /// Resting order.
    pub maker_order: u64,
    /// Incoming order.
    pub taker_order: u64,
}

/// Binary encoders, one function per message.
pub mod bin {
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
}

/// JSON encoders producing the same content as [`bin`], one object per message; a JSON
/// frame is an array of such objects. Prices and quantities are decimal strings at the
/// instrument's precision (exact: no floats anywhere).
pub mod json {
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
}

/// WebSocket opcodes the server writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// UTF-8 text.
    Text = 0x1,
    /// Binary.
    Binary = 0x2,
    /// Close.
    Close = 0x8,
    /// Ping.
    Ping = 0x9,
    /// Pong.
    Pong = 0xA,
}

/// Appends an unmasked, final server frame header for a payload of `len` bytes.
pub fn frame_header(out: &mut Vec<u8>, opcode: Opcode, len: usize) {
    out.push(0x80 | opcode as u8);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Length of the header of a complete unmasked server frame built by [`frame_header`].
pub fn frame_header_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// A complete unmasked server frame.
pub fn frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    frame_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A close frame with a code and reason (reason truncated to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(Opcode::Close, &payload)
}

/// Close codes the server uses (documented in `docs/PROTOCOL.md`).
pub mod close {
    /// Normal closure (answer to the client's close).
    pub const NORMAL: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error in framing.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Binary or fragmented data frame from the client: only single text frames are accepted.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Text that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: inbound message rate far over the limit.
    pub const POLICY: u16 = 1008;
    /// Inbound message larger than `ws_message_bytes_max`.
    pub const TOO_BIG: u16 = 1009;
    /// No pong (or any frame) within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4001;
    /// The connection's session was ended (logout, user removed).
    pub const SESSION_REVOKED: u16 = 4003;
    /// Slow consumer: persistently behind on a trades channel, or writes stalled.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Refused at the upgrade (a browser's page, which cannot read an HTTP answer to its
    /// WebSocket): the token or session cookie is missing its mark (bad, expired, ended).
    pub const UNAUTHORIZED: u16 = 4401;
    /// Refused at the upgrade: a page on an origin that may not use the session cookie.
    pub const ORIGIN_NOT_ALLOWED: u16 = 4403;
}

/// A decoded binary message (for clients, tests and tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Type.
    pub msg_type: MsgType,
    /// Flags.
    pub flags: u8,
    /// Channel id.
    pub channel: u32,
    /// Sequence.
    pub seq: u64,
    /// Engine timestamp.
    pub ts: u64,
    /// Body bytes.
    pub body: &'a [u8],
}

/// Why a binary payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header or its declared body.
    #[error("truncated message at offset {0}")]
    Truncated(usize),
    /// Unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
}

/// Iterates the messages of a binary frame payload.
pub fn decode(payload: &[u8]) -> impl Iterator<Item = Result<Decoded<'_>, DecodeError>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= payload.len() {
            return None;
        }
        let start = at;
        let Some(h) = payload.get(at..at + HEADER_BYTES) else {
            at = payload.len();
            return Some(Err(DecodeError::Truncated(start)));
        };
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        let body_len = usize::from(u16::from_le_bytes([h[2], h[3]]));
        let Some(body) = payload.get(at + HEADER_BYTES..at + HEADER_BYTES + body_len) else {
            at = payload.len();
            return Some(Err(DecodeError::Truncated(start)));
        };
        at += HEADER_BYTES + body_len;
        let Some(msg_type) = MsgType::from_u8(h[0]) else {
            return Some(Err(DecodeError::UnknownType(h[0])));
        };
        Some(Ok(Decoded {
            msg_type,
            flags: h[1],
            channel: u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
            seq: u64_at(8),
            ts: u64_at(16),
            body,
        }))
    })
}

/// Reads the `n`th little-endian i64 of a body.
pub fn body_i64(body: &[u8], n: usize) -> Option<i64> {
    body.get(n * 8..n * 8 + 8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// The engine's form of a book delta message (`None` if it is not a well-formed one). The
/// instrument is left 0: the channel, not the message, names it.
pub fn decode_book_delta(msg: &Decoded<'_>) -> Option<tickgate_engine::BookDelta> {
    if msg.msg_type != MsgType::BookDelta {
        return None;
    }
    Some(tickgate_engine::BookDelta {
        instrument: tickgate_engine::InstrumentId(0),
        seq: tickgate_engine::Seq(msg.seq),
        ts: tickgate_engine::UnixNanos(msg.ts),
        side: Side::from_u8(*msg.body.first()?)?,
        price: Price(body_i64(msg.body, 1)?),
        qty: Qty(body_i64(msg.body, 2)?),
    })
}

/// Decodes candles: the body of a `Candle` (one), or of a `CandlesSnapshot` (`count` after
/// an 8-byte count field).
pub fn decode_candles(msg: &Decoded<'_>) -> Option<Vec<Candle>> {
    let body = match msg.msg_type {
        MsgType::Candle => msg.body,
        MsgType::CandlesSnapshot => {
            let count = u32::from_le_bytes(msg.body.get(..4)?.try_into().ok()?) as usize;
            let candles = msg.body.get(8..)?;
            (candles.len() == count * bin::CANDLE_BYTES).then_some(candles)?
        }
        _ => return None,
    };
    if body.len() % bin::CANDLE_BYTES != 0 {
        return None;
    }
    let u =
        |c: &[u8], n: usize| u64::from_le_bytes(c[n * 8..n * 8 + 8].try_into().unwrap_or([0; 8]));
    Some(
        body.chunks_exact(bin::CANDLE_BYTES)
            .map(|c| Candle {
                start: u(c, 0),
                open: u(c, 1) as i64,
                high: u(c, 2) as i64,
                low: u(c, 3) as i64,
                close: u(c, 4) as i64,
                volume: u(c, 5) as i64,
                trades: u(c, 6),
            })
            .collect(),
    )
}

/// Decodes a book snapshot body into levels.
pub fn decode_book_snapshot(body: &[u8]) -> Option<(Vec<Level>, Vec<Level>)> {
    let bids = usize::from(u16::from_le_bytes([*body.first()?, *body.get(1)?]));
    let asks = usize::from(u16::from_le_bytes([*body.get(2)?, *body.get(3)?]));
    if body.len() != 8 + 16 * (bids + asks) {
        return None;
    }
    let level = |n: usize| {
        (
            Price(body_i64(&body[8..], 2 * n).unwrap_or(0)),
            Qty(body_i64(&body[8..], 2 * n + 1).unwrap_or(0)),
        )
    };
    Some(((0..bids).map(level).collect(), (bids..bids + asks).map(level).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::Seq;

    #[test]
    fn json_bbo_carries_the_snapshot_and_resync_flags() {
        let (assets, specs) = tickgate_engine::default_markets();
        let i = tickgate_engine::Instrument::new(
            tickgate_engine::InstrumentId(0),
            specs[0].clone(),
            &assets,
        )
        .expect("valid instrument");
        let bbo = |flags| {
            let mut out = String::new();
            json::bbo(
                &mut out,
                &i,
                "bbo.BTC-USD",
                flags,
                3,
                4,
                (Price(1), Qty(2)),
                (Price(5), Qty(6)),
            );
            serde_json::from_str::<serde_json::Value>(&out).expect("JSON")
        };
        let live = bbo(0);
        assert_eq!(
            (live["snapshot"].as_bool(), live["resync"].as_bool()),
            (Some(false), Some(false))
        );
        let resync = bbo(FLAG_SNAPSHOT | FLAG_RESYNC);
        assert_eq!(
            (resync["snapshot"].as_bool(), resync["resync"].as_bool()),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn binary_messages_round_trip() {
        let mut out = Vec::new();
        bin::book_delta(&mut out, 5, 10, 99, Side::Sell, Price(123), Qty(4));
        let t = TradeMsg {
            seq: 3,
            ts: 7,
            price: Price(1),
            qty: Qty(2),
            taker_side: Side::Buy,
            maker_order: 8,
            taker_order: 9,
        };
        bin::trade(&mut out, 7, &t);
        let snap = BookSnapshot {
            seq: Seq(11),
            bids: vec![(Price(10), Qty(1))],
            asks: vec![(Price(12), Qty(2)), (Price(13), Qty(3))],
        };
        bin::book_snapshot(&mut out, 5, FLAG_RESYNC, 100, &snap);
        bin::gap(&mut out, 7, 1, 4, 9);
        let msgs: Vec<Decoded<'_>> = decode(&out).collect::<Result<_, _>>().expect("valid");
        assert_eq!(msgs.len(), 4);
        assert_eq!(
            (msgs[0].msg_type, msgs[0].channel, msgs[0].seq, msgs[0].ts),
            (MsgType::BookDelta, 5, 10, 99)
        );
        assert_eq!(msgs[0].body[0], Side::Sell.as_u8());
        assert_eq!((body_i64(msgs[0].body, 1), body_i64(msgs[0].body, 2)), (Some(123), Some(4)));
        assert_eq!(msgs[1].body.len(), 40);
        assert_eq!(msgs[2].flags, FLAG_RESYNC | FLAG_SNAPSHOT);
        assert_eq!(
            decode_book_snapshot(msgs[2].body),
            Some((snap.bids.clone(), snap.asks.clone()))
        );
        assert_eq!((body_i64(msgs[3].body, 0), body_i64(msgs[3].body, 1)), (Some(4), Some(9)));
    }

    #[test]
    fn truncated_and_unknown_messages_are_errors() {
        let mut out = Vec::new();
        bin::heartbeat(&mut out, 1, 2, 3);
        assert_eq!(decode(&out[..10]).next(), Some(Err(DecodeError::Truncated(0))));
        out[0] = 99;
        assert_eq!(decode(&out).next(), Some(Err(DecodeError::UnknownType(99))));
    }

    #[test]
    fn frame_headers_use_the_shortest_length_form() {
        assert_eq!(frame(Opcode::Text, b"hi"), vec![0x81, 2, b'h', b'i']);
        let mid = frame(Opcode::Binary, &[0; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 1, 44]);
        let big = frame(Opcode::Binary, &vec![0; 70_000]);
        assert_eq!(&big[..2], &[0x82, 127]);
        assert_eq!(close_frame(4008, "slow"), vec![0x88, 6, 0x0f, 0xa8, b's', b'l', b'o', b'w']);
    }
}
