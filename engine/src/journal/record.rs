//! A command as a journal record's payload:
//!
//! ```text
//! u64 seq | u64 ingest ts (ns) | u8 kind | fixed body of the kind
//! ```
//!
//! and the frame around it (`u32 payload length | u32 CRC32C of the payload`).

use super::{Record, RECORD_HEADER_BYTES};
use crate::binary::{ByteReader, ByteWriter, Truncated};
use crate::command::{
    CancelOrder, Command, CommandKind, NewOrder, OrderType, ReplaceOrder, ReplaceQty, StpMode,
    TradingStatus, Transfer,
};
use crate::idempotency::IdempotencyKey;
use crate::types::{
    AccountId, Amount, AssetId, InstrumentId, OrderId, Price, Qty, Side, UnixNanos,
};

const KIND_NEW: u8 = 1;
const KIND_CANCEL: u8 = 2;
const KIND_REPLACE: u8 = 3;
const KIND_TRANSFER: u8 = 4;
const KIND_STATUS: u8 = 5;
const KIND_NEW_KEYED: u8 = 6;
/// A replace whose quantity is the order's total ([`ReplaceQty::Total`]); `KIND_REPLACE`'s
/// is what remains open, as every journal before it has it.
const KIND_REPLACE_TOTAL: u8 = 7;

/// Sequence, timestamp, kind: before every body.
const PREFIX_BYTES: usize = 8 + 8 + 1;
/// Order id, client id, account, instrument, side/type/stp, price, quantity.
const NEW_BYTES: usize = PREFIX_BYTES + 8 + 8 + 4 + 4 + 3 + 8 + 8;
const NEW_KEYED_BYTES: usize = NEW_BYTES + 16;
const CANCEL_BYTES: usize = PREFIX_BYTES + 8 + 4 + 4;
const REPLACE_BYTES: usize = PREFIX_BYTES + 8 + 4 + 4 + 8 + 8;
const TRANSFER_BYTES: usize = PREFIX_BYTES + 4 + 2 + 8 + 8;
const STATUS_BYTES: usize = PREFIX_BYTES + 4 + 1;
/// The largest payload (a keyed new order), which the journal's `PAYLOAD_MAX` must admit.
pub(super) const PAYLOAD_BYTES_MAX: usize = NEW_KEYED_BYTES;
/// The smallest payload (a status change), which bounds sequences per byte.
pub(super) const PAYLOAD_BYTES_MIN: usize = STATUS_BYTES;

const _: () = assert!(NEW_KEYED_BYTES == 76, "the figure the journal's docs quote");
const _: () = assert!(
    STATUS_BYTES <= CANCEL_BYTES
        && STATUS_BYTES <= TRANSFER_BYTES
        && STATUS_BYTES <= REPLACE_BYTES
        && STATUS_BYTES <= NEW_BYTES
);
const _: () = assert!(
    NEW_KEYED_BYTES >= REPLACE_BYTES
        && NEW_KEYED_BYTES >= TRANSFER_BYTES
        && NEW_KEYED_BYTES >= CANCEL_BYTES
);

/// Appends the framed record of `command` at `seq` to `out`.
pub fn encode_record(seq: u64, command: &Command, out: &mut Vec<u8>) {
    let mut w = ByteWriter::new(out);
    let start = w.position();
    w.put_bytes(&[0; RECORD_HEADER_BYTES]);
    w.put_u64(seq);
    w.put_u64(command.ts.0);
    encode_kind(&command.kind, &mut w);
    let payload = w.written_since(start + RECORD_HEADER_BYTES);
    debug_assert!((PAYLOAD_BYTES_MIN..=PAYLOAD_BYTES_MAX).contains(&payload.len()));
    let (len, crc) = (payload.len() as u32, crc32c::crc32c(payload));
    w.patch_u32(start, len);
    w.patch_u32(start + 4, crc);
}

/// The kind byte and the fixed body of the kind.
fn encode_kind(kind: &CommandKind, w: &mut ByteWriter<'_>) {
    match kind {
        CommandKind::New(o) => {
            w.put_u8(if o.key.is_some() { KIND_NEW_KEYED } else { KIND_NEW });
            w.put_u64(o.order_id.0);
            w.put_u64(o.client_order_id);
            w.put_u32(o.account.0);
            w.put_u32(o.instrument.0);
            w.put_bytes(&[o.side.as_u8(), o.order_type.as_u8(), o.stp.as_u8()]);
            w.put_i64(o.price.0);
            w.put_i64(o.qty.0);
            if let Some(key) = o.key {
                w.put_u128(key.0);
            }
        }
        CommandKind::Cancel(c) => {
            w.put_u8(KIND_CANCEL);
            w.put_u64(c.order_id.0);
            w.put_u32(c.account.0);
            w.put_u32(c.instrument.0);
        }
        CommandKind::Replace(r) => {
            w.put_u8(match r.qty {
                ReplaceQty::Open(_) => KIND_REPLACE,
                ReplaceQty::Total(_) => KIND_REPLACE_TOTAL,
            });
            w.put_u64(r.order_id.0);
            w.put_u32(r.account.0);
            w.put_u32(r.instrument.0);
            w.put_i64(r.price.0);
            w.put_i64(r.qty.given().0);
        }
        CommandKind::Status(st) => {
            w.put_u8(KIND_STATUS);
            w.put_u32(st.instrument.0);
            w.put_u8(u8::from(st.halted));
        }
        CommandKind::Transfer(t) => {
            w.put_u8(KIND_TRANSFER);
            w.put_u32(t.account.0);
            w.put_u16(t.asset.0);
            w.put_i64(t.amount.0);
            w.put_u64(t.request_id);
        }
    }
}

/// Why a payload is not a command: it ended early, or holds a value no command encodes to.
enum Unknown {
    Truncated,
    Value,
}

impl From<Truncated> for Unknown {
    fn from(_: Truncated) -> Self {
        Unknown::Truncated
    }
}

/// A decoded enum value, or the payload is not a command.
fn known<T>(value: Option<T>) -> Result<T, Unknown> {
    value.ok_or(Unknown::Value)
}

/// Decodes a payload (checksum already verified). `None`: not a command this build knows
/// (unknown kind or value, cut short, or bytes left over).
pub fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut r = ByteReader::new(payload);
    let record = decode(&mut r).ok()?;
    r.finished().then_some(record)
}

/// Decodes consecutive framed records ([`encode_record`]'s output, e.g. a replicated
/// batch), checking each frame's length and checksum and that sequences follow each
/// other. `Err`: what is wrong, and at which byte.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let mut records = Vec::with_capacity(bytes.len() / (RECORD_HEADER_BYTES + NEW_BYTES));
    let mut r = ByteReader::new(bytes);
    while r.remaining() > 0 {
        let at = r.position();
        let frame = |_| format!("record frame cut short at byte {at}");
        let len = r.u32().map_err(frame)? as usize;
        let crc = r.u32().map_err(frame)?;
        if !(PAYLOAD_BYTES_MIN..=PAYLOAD_BYTES_MAX).contains(&len) {
            return Err(format!("invalid record length {len} at byte {at}"));
        }
        let payload = r.bytes(len).map_err(frame)?;
        if crc32c::crc32c(payload) != crc {
            return Err(format!("record checksum mismatch at byte {at}"));
        }
        let record =
            decode_payload(payload).ok_or_else(|| format!("unknown command at byte {at}"))?;
        if let Some(last) = records.last().map(|l: &Record| l.seq) {
            if Some(record.seq) != last.checked_add(1) {
                return Err(format!("sequence {} after {last} at byte {at}", record.seq));
            }
        }
        records.push(record);
    }
    Ok(records)
}

fn decode(r: &mut ByteReader<'_>) -> Result<Record, Unknown> {
    let seq = r.u64()?;
    let ts = UnixNanos(r.u64()?);
    let kind = match r.u8()? {
        kind @ (KIND_NEW | KIND_NEW_KEYED) => CommandKind::New(decode_new(r, kind)?),
        KIND_CANCEL => CommandKind::Cancel(CancelOrder {
            order_id: OrderId(r.u64()?),
            account: AccountId(r.u32()?),
            instrument: InstrumentId(r.u32()?),
        }),
        kind @ (KIND_REPLACE | KIND_REPLACE_TOTAL) => CommandKind::Replace(ReplaceOrder {
            order_id: OrderId(r.u64()?),
            account: AccountId(r.u32()?),
            instrument: InstrumentId(r.u32()?),
            price: Price(r.i64()?),
            qty: match (kind, Qty(r.i64()?)) {
                (KIND_REPLACE, q) => ReplaceQty::Open(q),
                (_, q) => ReplaceQty::Total(q),
            },
        }),
        KIND_TRANSFER => CommandKind::Transfer(Transfer {
            account: AccountId(r.u32()?),
            asset: AssetId(r.u16()?),
            amount: Amount(r.i64()?),
            request_id: r.u64()?,
        }),
        KIND_STATUS => CommandKind::Status(TradingStatus {
            instrument: InstrumentId(r.u32()?),
            halted: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(Unknown::Value),
            },
        }),
        _ => return Err(Unknown::Value),
    };
    Ok(Record { seq, command: Command { ts, kind } })
}

fn decode_new(r: &mut ByteReader<'_>, kind: u8) -> Result<NewOrder, Unknown> {
    Ok(NewOrder {
        order_id: OrderId(r.u64()?),
        client_order_id: r.u64()?,
        account: AccountId(r.u32()?),
        instrument: InstrumentId(r.u32()?),
        side: known(Side::from_u8(r.u8()?))?,
        order_type: known(OrderType::from_u8(r.u8()?))?,
        stp: known(StpMode::from_u8(r.u8()?))?,
        price: Price(r.i64()?),
        qty: Qty(r.i64()?),
        key: match kind {
            KIND_NEW_KEYED => Some(IdempotencyKey(r.u128()?)),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_encodes_to_its_declared_size() {
        let new = NewOrder {
            key: None,
            order_id: OrderId(1),
            client_order_id: 2,
            account: AccountId(3),
            instrument: InstrumentId(4),
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Price(5),
            qty: Qty(6),
            stp: StpMode::None,
        };
        let keyed = NewOrder { key: Some(IdempotencyKey(7)), ..new };
        let (order_id, account, instrument) = (OrderId(1), AccountId(2), InstrumentId(3));
        let kinds = [
            (CommandKind::New(new), NEW_BYTES),
            (CommandKind::New(keyed), NEW_KEYED_BYTES),
            (CommandKind::Cancel(CancelOrder { order_id, account, instrument }), CANCEL_BYTES),
            (
                CommandKind::Replace(ReplaceOrder {
                    order_id,
                    account,
                    instrument,
                    price: Price(1),
                    qty: ReplaceQty::Open(Qty(1)),
                }),
                REPLACE_BYTES,
            ),
            (
                CommandKind::Replace(ReplaceOrder {
                    order_id,
                    account,
                    instrument,
                    price: Price(1),
                    qty: ReplaceQty::Total(Qty(1)),
                }),
                REPLACE_BYTES,
            ),
            (
                CommandKind::Transfer(Transfer {
                    account,
                    asset: AssetId(1),
                    amount: Amount(-1),
                    request_id: 9,
                }),
                TRANSFER_BYTES,
            ),
            (CommandKind::Status(TradingStatus { instrument, halted: true }), STATUS_BYTES),
        ];
        for (kind, bytes) in kinds {
            let mut out = Vec::new();
            encode_record(1, &Command { ts: UnixNanos(1), kind }, &mut out);
            assert_eq!(out.len(), RECORD_HEADER_BYTES + bytes, "{kind:?}");
            let back = decode_payload(&out[RECORD_HEADER_BYTES..]).map(|r| r.command.kind);
            assert_eq!(back, Some(kind), "decodes to what was encoded");
            // Every cut of the payload is refused, never a panic.
            for cut in 0..bytes {
                assert!(decode_payload(&out[RECORD_HEADER_BYTES..][..cut]).is_none());
            }
        }
    }
}
