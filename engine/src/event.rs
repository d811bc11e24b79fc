//! Events: what the engine tells the world. Public channels (per instrument: trades, book,
//! bbo) carry gap-free sequences; execution and transfer reports are private to an account
//! and share that account's own sequence. Every event carries the timestamp of its command.
//!
//! Events are `Copy` and encode to a fixed array of [`EVENT_WORDS`] `u64`s: that is the
//! slot format of the event ring and, as little-endian bytes, the canonical byte form the
//! determinism checks hash.

use crate::binary::Fnv64;
use crate::command::{OrderType, RejectReason};
use crate::types::{
    AccountId, Amount, AssetId, InstrumentId, OrderId, Price, Qty, Seq, Side, UnixNanos,
};

/// Number of `u64` words an encoded event occupies.
pub const EVENT_WORDS: usize = 11;

/// A trade between a resting (maker) and an incoming (taker) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trade {
    /// Market.
    pub instrument: InstrumentId,
    /// Sequence on the instrument's trades channel; also the trade id.
    pub seq: Seq,
    /// Timestamp of the taker's command.
    pub ts: UnixNanos,
    /// Execution price (the maker's price).
    pub price: Price,
    /// Executed quantity.
    pub qty: Qty,
    /// Side of the taker.
    pub taker_side: Side,
    /// Resting order.
    pub maker_order: OrderId,
    /// Incoming order.
    pub taker_order: OrderId,
}

/// A price level's new aggregate quantity (zero: the level is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookDelta {
    /// Market.
    pub instrument: InstrumentId,
    /// Sequence on the instrument's book channel.
    pub seq: Seq,
    /// Timestamp of the command.
    pub ts: UnixNanos,
    /// Side of the level.
    pub side: Side,
    /// Level price.
    pub price: Price,
    /// New total quantity at the level.
    pub qty: Qty,
}

/// Best bid and offer after a command changed them. An empty side has price 0, qty 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bbo {
    /// Market.
    pub instrument: InstrumentId,
    /// Sequence on the instrument's bbo channel.
    pub seq: Seq,
    /// Timestamp of the command.
    pub ts: UnixNanos,
    /// Best bid price.
    pub bid_price: Price,
    /// Quantity at the best bid.
    pub bid_qty: Qty,
    /// Best ask price.
    pub ask_price: Price,
    /// Quantity at the best ask.
    pub ask_qty: Qty,
}

/// What happened to an order (a transfer has its own event, [`TransferReport`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExecKind {
    /// Validated, funded, now live.
    Accepted = 0,
    /// Refused; `reason` says why. Nothing changed.
    Rejected = 1,
    /// Traded part of its quantity (`last_qty` at `last_price`).
    PartiallyFilled = 2,
    /// Traded its last quantity.
    Filled = 3,
    /// Removed before filling completely; `reason` says why.
    Canceled = 4,
    /// Price and/or quantity changed.
    Replaced = 5,
    // 6 was `Transferred`: the kind byte a `TransferReport` still encodes to (see
    // `TRANSFER_KIND`), never an order's kind.
    /// A cancel was refused (`reason` says why); the order, if it exists, is unchanged and
    /// `leaves_qty` is what it still has open.
    CancelRejected = 7,
    /// A replace was refused (`reason` says why); the order, if it exists, is unchanged and
    /// `leaves_qty` is what it still has open.
    ReplaceRejected = 8,
}

impl ExecKind {
    /// Inverse of `as u8`.
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0 => ExecKind::Accepted,
            1 => ExecKind::Rejected,
            2 => ExecKind::PartiallyFilled,
            3 => ExecKind::Filled,
            4 => ExecKind::Canceled,
            5 => ExecKind::Replaced,
            7 => ExecKind::CancelRejected,
            8 => ExecKind::ReplaceRejected,
            _ => return None,
        })
    }

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecKind::Accepted => "accepted",
            ExecKind::Rejected => "rejected",
            ExecKind::PartiallyFilled => "partially_filled",
            ExecKind::Filled => "filled",
            ExecKind::Canceled => "canceled",
            ExecKind::Replaced => "replaced",
            ExecKind::CancelRejected => "cancel_rejected",
            ExecKind::ReplaceRejected => "replace_rejected",
        }
    }

    /// Whether this report refuses a command (a new order, a cancel or a replace).
    pub fn is_rejection(self) -> bool {
        matches!(self, ExecKind::Rejected | ExecKind::CancelRejected | ExecKind::ReplaceRejected)
    }
}

/// A private report to one account about one of its orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecReport {
    /// Owner.
    pub account: AccountId,
    /// Sequence on the account's private channel.
    pub seq: Seq,
    /// Timestamp of the command that caused it.
    pub ts: UnixNanos,
    /// What happened.
    pub kind: ExecKind,
    /// Why (rejections and cancels); `None` for a report that is neither.
    pub reason: Option<RejectReason>,
    /// Market.
    pub instrument: InstrumentId,
    /// Order.
    pub order_id: OrderId,
    /// Client's id for the order.
    pub client_order_id: u64,
    /// Order side.
    pub side: Side,
    /// Order type.
    pub order_type: OrderType,
    /// Order limit price.
    pub price: Price,
    /// Price of this fill (fills only).
    pub last_price: Price,
    /// Quantity of this fill (fills only).
    pub last_qty: Qty,
    /// Quantity still open.
    pub leaves_qty: Qty,
    /// Quantity filled so far.
    pub cum_qty: Qty,
}

/// A private report to one account that a transfer was applied (a refused transfer is an
/// [`ExecReport`] of kind `Rejected`, as before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferReport {
    /// Account credited or debited.
    pub account: AccountId,
    /// Sequence on the account's private channel (shared with its execution reports, so a
    /// client sees no gap).
    pub seq: Seq,
    /// Timestamp of the transfer command.
    pub ts: UnixNanos,
    /// Asset moved.
    pub asset: AssetId,
    /// Signed amount applied (negative: a debit), in the asset's minor units.
    pub amount: Amount,
    /// The submitter's id for the transfer ([`crate::Transfer::request_id`]).
    pub request_id: u64,
}

/// Any event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Public trade.
    Trade(Trade),
    /// Public level change.
    BookDelta(BookDelta),
    /// Public top of book.
    Bbo(Bbo),
    /// Private execution report.
    Exec(ExecReport),
    /// Private transfer report.
    Transfer(TransferReport),
}

const TAG_TRADE: u64 = 1;
const TAG_DELTA: u64 = 2;
const TAG_BBO: u64 = 3;
const TAG_EXEC: u64 = 4;
/// The kind byte of a transfer under `TAG_EXEC`. A transfer keeps the slot layout it had
/// when it travelled as an execution report of this kind (account and sequence where an
/// execution report has them, `request_id` as the client order id, the asset id as the
/// price, the amount as the last quantity, the amount's sign as the side, order type
/// `Limit`, everything else zero): event digests, ring slots and the canonical bytes stay
/// what they were. `ExecKind` never takes this value.
const TRANSFER_KIND: u8 = 6;

#[inline]
fn head(tag: u64, b1: u8, b2: u8, b3: u8, id: u32) -> u64 {
    tag | u64::from(b1) << 8 | u64::from(b2) << 16 | u64::from(b3) << 24 | u64::from(id) << 32
}

impl Event {
    /// The event's timestamp.
    pub fn ts(&self) -> UnixNanos {
        match self {
            Event::Trade(e) => e.ts,
            Event::BookDelta(e) => e.ts,
            Event::Bbo(e) => e.ts,
            Event::Exec(e) => e.ts,
            Event::Transfer(e) => e.ts,
        }
    }

    /// The instrument the event is about; `None` for a transfer, which is about none.
    pub fn instrument(&self) -> Option<InstrumentId> {
        match self {
            Event::Trade(e) => Some(e.instrument),
            Event::BookDelta(e) => Some(e.instrument),
            Event::Bbo(e) => Some(e.instrument),
            Event::Exec(e) => Some(e.instrument),
            Event::Transfer(_) => None,
        }
    }

    /// Fixed-size encoding (see the module docs). Unused words are zero.
    #[inline(always)]
    pub fn to_words(&self) -> [u64; EVENT_WORDS] {
        let mut w = [0u64; EVENT_WORDS];
        match *self {
            Event::Trade(t) => {
                w[0] = head(TAG_TRADE, t.taker_side.as_u8(), 0, 0, t.instrument.0);
                w[1] = t.seq.0;
                w[2] = t.ts.0;
                w[3] = t.price.0 as u64;
                w[4] = t.qty.0 as u64;
                w[5] = t.maker_order.0;
                w[6] = t.taker_order.0;
            }
            Event::BookDelta(d) => {
                w[0] = head(TAG_DELTA, d.side.as_u8(), 0, 0, d.instrument.0);
                w[1] = d.seq.0;
                w[2] = d.ts.0;
                w[3] = d.price.0 as u64;
                w[4] = d.qty.0 as u64;
            }
            Event::Bbo(b) => {
                w[0] = head(TAG_BBO, 0, 0, 0, b.instrument.0);
                w[1] = b.seq.0;
                w[2] = b.ts.0;
                w[3] = b.bid_price.0 as u64;
                w[4] = b.bid_qty.0 as u64;
                w[5] = b.ask_price.0 as u64;
                w[6] = b.ask_qty.0 as u64;
            }
            Event::Exec(e) => {
                w[0] = head(
                    TAG_EXEC,
                    e.side.as_u8(),
                    e.kind as u8,
                    RejectReason::code_of(e.reason),
                    e.instrument.0,
                );
                w[1] = e.seq.0;
                w[2] = e.ts.0;
                w[3] = u64::from(e.account.0) | u64::from(e.order_type.as_u8()) << 32;
                w[4] = e.order_id.0;
                w[5] = e.client_order_id;
                w[6] = e.price.0 as u64;
                w[7] = e.last_price.0 as u64;
                w[8] = e.last_qty.0 as u64;
                w[9] = e.leaves_qty.0 as u64;
                w[10] = e.cum_qty.0 as u64;
            }
            Event::Transfer(t) => {
                let side = if t.amount.0 >= 0 { Side::Buy } else { Side::Sell };
                w[0] = head(TAG_EXEC, side.as_u8(), TRANSFER_KIND, 0, 0);
                w[1] = t.seq.0;
                w[2] = t.ts.0;
                w[3] = u64::from(t.account.0) | u64::from(OrderType::Limit.as_u8()) << 32;
                w[5] = t.request_id;
                w[6] = u64::from(t.asset.0);
                w[8] = t.amount.0 as u64;
            }
        }
        w
    }

    /// Inverse of [`Event::to_words`]; `None` for words that no event encodes to.
    #[inline]
    pub fn from_words(w: &[u64; EVENT_WORDS]) -> Option<Event> {
        let byte = |n: u32| (w[0] >> (8 * n)) as u8;
        let instrument = InstrumentId((w[0] >> 32) as u32);
        let (seq, ts) = (Seq(w[1]), UnixNanos(w[2]));
        Some(match w[0] & 0xff {
            TAG_TRADE => Event::Trade(Trade {
                instrument,
                seq,
                ts,
                taker_side: Side::from_u8(byte(1))?,
                price: Price(w[3] as i64),
                qty: Qty(w[4] as i64),
                maker_order: OrderId(w[5]),
                taker_order: OrderId(w[6]),
            }),
            TAG_DELTA => Event::BookDelta(BookDelta {
                instrument,
                seq,
                ts,
                side: Side::from_u8(byte(1))?,
                price: Price(w[3] as i64),
                qty: Qty(w[4] as i64),
            }),
            TAG_BBO => Event::Bbo(Bbo {
                instrument,
                seq,
                ts,
                bid_price: Price(w[3] as i64),
                bid_qty: Qty(w[4] as i64),
                ask_price: Price(w[5] as i64),
                ask_qty: Qty(w[6] as i64),
            }),
            TAG_EXEC if byte(2) == TRANSFER_KIND => {
                let t = TransferReport {
                    account: AccountId(w[3] as u32),
                    seq,
                    ts,
                    asset: AssetId(u16::try_from(w[6]).ok()?),
                    amount: Amount(w[8] as i64),
                    request_id: w[5],
                };
                // Only the one encoding of each transfer decodes (an inverse, not a guess).
                let event = Event::Transfer(t);
                return (event.to_words() == *w).then_some(event);
            }
            TAG_EXEC => Event::Exec(ExecReport {
                instrument,
                seq,
                ts,
                side: Side::from_u8(byte(1))?,
                kind: ExecKind::from_u8(byte(2))?,
                reason: RejectReason::from_code(byte(3)).ok()?,
                account: AccountId(w[3] as u32),
                order_type: OrderType::from_u8((w[3] >> 32) as u8)?,
                order_id: OrderId(w[4]),
                client_order_id: w[5],
                price: Price(w[6] as i64),
                last_price: Price(w[7] as i64),
                last_qty: Qty(w[8] as i64),
                leaves_qty: Qty(w[9] as i64),
                cum_qty: Qty(w[10] as i64),
            }),
            _ => return None,
        })
    }

    /// Appends the canonical little-endian byte form.
    pub fn write_bytes(&self, out: &mut Vec<u8>) {
        for word in self.to_words() {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
}

/// Order-sensitive 64-bit FNV-1a digest over canonical event bytes: two event streams
/// digest equal exactly when they are byte-identical (up to hash collisions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventDigest {
    state: u64,
    /// Events folded in.
    pub count: u64,
}

impl Default for EventDigest {
    fn default() -> Self {
        EventDigest { state: Fnv64::OFFSET_BASIS, count: 0 }
    }
}

impl EventDigest {
    /// Folds one event in.
    pub fn add(&mut self, event: &Event) {
        let mut fnv = Fnv64::resume(self.state);
        for word in event.to_words() {
            fnv.write_u64(word);
        }
        self.state = fnv.value();
        self.count += 1;
    }

    /// The digest so far.
    pub fn value(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_words() {
        let ts = UnixNanos(123);
        let events = [
            Event::Trade(Trade {
                instrument: InstrumentId(3),
                seq: Seq(9),
                ts,
                price: Price(-5),
                qty: Qty(7),
                taker_side: Side::Sell,
                maker_order: OrderId(1),
                taker_order: OrderId(u64::MAX),
            }),
            Event::BookDelta(BookDelta {
                instrument: InstrumentId(u32::MAX),
                seq: Seq(1),
                ts,
                side: Side::Buy,
                price: Price(100),
                qty: Qty(0),
            }),
            Event::Bbo(Bbo {
                instrument: InstrumentId(0),
                seq: Seq(2),
                ts,
                bid_price: Price(1),
                bid_qty: Qty(2),
                ask_price: Price(3),
                ask_qty: Qty(4),
            }),
            Event::Exec(ExecReport {
                account: AccountId(77),
                seq: Seq(5),
                ts,
                kind: ExecKind::PartiallyFilled,
                reason: Some(RejectReason::SelfTrade),
                instrument: InstrumentId(2),
                order_id: OrderId(42),
                client_order_id: 43,
                side: Side::Sell,
                order_type: OrderType::PostOnly,
                price: Price(10),
                last_price: Price(11),
                last_qty: Qty(12),
                leaves_qty: Qty(13),
                cum_qty: Qty(14),
            }),
            Event::Exec(ExecReport {
                account: AccountId(1),
                seq: Seq(1),
                ts,
                kind: ExecKind::Accepted,
                reason: None,
                instrument: InstrumentId(0),
                order_id: OrderId(1),
                client_order_id: 0,
                side: Side::Buy,
                order_type: OrderType::Limit,
                price: Price(1),
                last_price: Price(0),
                last_qty: Qty(0),
                leaves_qty: Qty(1),
                cum_qty: Qty(0),
            }),
            Event::Transfer(TransferReport {
                account: AccountId(77),
                seq: Seq(6),
                ts,
                asset: AssetId(3),
                amount: Amount(-125),
                request_id: 9,
            }),
            Event::Transfer(TransferReport {
                account: AccountId(u32::MAX),
                seq: Seq(7),
                ts,
                asset: AssetId(u16::MAX),
                amount: Amount(i64::MAX),
                request_id: 0,
            }),
        ];
        for e in events {
            assert_eq!(Event::from_words(&e.to_words()), Some(e));
        }
        // No reason is byte 0 of the head word, as `RejectReason::None` was.
        assert_eq!((events[4].to_words()[0] >> 24) as u8, 0);
        assert_eq!((events[3].to_words()[0] >> 24) as u8, RejectReason::SelfTrade.as_u8());
        assert_eq!(Event::from_words(&[0; EVENT_WORDS]), None);
    }

    /// A transfer's slot is the one its execution report of kind 6 had (so digests of
    /// recorded streams are unchanged), and words that are not exactly that are refused.
    #[test]
    fn a_transfer_keeps_its_former_slot_layout() {
        let t = TransferReport {
            account: AccountId(5),
            seq: Seq(8),
            ts: UnixNanos(99),
            asset: AssetId(2),
            amount: Amount(-40),
            request_id: 11,
        };
        let w = Event::Transfer(t).to_words();
        let sell = u64::from(Side::Sell.as_u8()) << 8;
        assert_eq!(w, [TAG_EXEC | sell | 6 << 16, 8, 99, 5, 0, 11, 2, 0, (-40i64) as u64, 0, 0]);
        for (i, bump) in [(0, 1u64 << 32), (0, 1 << 24), (0, 1 << 8), (4, 1), (7, 1), (9, 1)] {
            let mut bad = w;
            bad[i] ^= bump;
            assert_eq!(Event::from_words(&bad), None, "word {i}");
        }
    }

    #[test]
    fn digest_is_order_sensitive() {
        let a = Event::BookDelta(BookDelta {
            instrument: InstrumentId(0),
            seq: Seq(1),
            ts: UnixNanos(0),
            side: Side::Buy,
            price: Price(1),
            qty: Qty(1),
        });
        let mut b = a;
        if let Event::BookDelta(d) = &mut b {
            d.seq = Seq(2);
        }
        let (mut d1, mut d2) = (EventDigest::default(), EventDigest::default());
        d1.add(&a);
        d1.add(&b);
        d2.add(&b);
        d2.add(&a);
        assert_ne!(d1.value(), d2.value());
        assert_eq!(d1.count, 2);
    }
}
