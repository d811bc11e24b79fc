//! Wire protocol v1 (see `docs/PROTOCOL.md`): channel names and ids, the binary market-data
//! messages and their JSON twins, and WebSocket frame headers for pre-framed server frames.
//!
//! Binary messages are a fixed 24-byte little-endian header followed by a fixed-layout
//! body; a WebSocket binary frame carries one or more messages back to back. Server frames
//! are unmasked, so a frame encoded once can be written unchanged to every subscriber.

use tickgate_engine::types::Fixed;
use tickgate_engine::Level;
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
/// Trades kept per instrument (for the snapshot and `GET /api/v1/markets/{sym}/trades`):
/// the tape the candles store keeps across restarts.
pub const TRADES_KEPT: usize = crate::candles::TAPE_KEPT;

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

impl From<&crate::candles::TapeTrade> for TradeMsg {
    fn from(t: &crate::candles::TapeTrade) -> Self {
        TradeMsg {
            seq: t.seq,
            ts: t.ts,
            price: Price(t.price),
            qty: Qty(t.qty),
            taker_side: if t.taker_buys { Side::Buy } else { Side::Sell },
            maker_order: t.maker_order,
            taker_order: t.taker_order,
        }
    }
}

impl From<&tickgate_engine::Trade> for TradeMsg {
    fn from(t: &tickgate_engine::Trade) -> Self {
        TradeMsg {
            seq: t.seq.0,
            ts: t.ts.0,
            price: t.price,
            qty: t.qty,
            taker_side: t.taker_side,
            maker_order: t.maker_order.0,
            taker_order: t.taker_order.0,
        }
    }
}

pub mod bin;
mod decode;
mod frame;
pub mod json;

pub use decode::*;
pub use frame::*;

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
