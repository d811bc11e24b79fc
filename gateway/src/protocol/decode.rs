//! Decoding binary messages: for clients, tests and tools.

use super::*;

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
