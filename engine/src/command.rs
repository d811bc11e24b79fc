//! Commands: everything that changes engine state. A command is plain data, carries its
//! ingest timestamp, and is what the journal records, so replaying the same commands
//! reproduces the same events.

use crate::types::{
    AccountId, Amount, AssetId, InstrumentId, OrderId, Price, Qty, Side, UnixNanos,
};

/// A client's idempotency key, as a 128-bit hash of its text (the journal and the tables
/// carry a fixed-size value; a collision between two keys of one account is as likely as
/// guessing a 128-bit secret).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(pub u128);

impl IdempotencyKey {
    /// The key for a client's key text (a stable hash: it must mean the same key after an
    /// upgrade, since it is stored in journals and snapshots).
    pub fn from_text(text: &str) -> Self {
        IdempotencyKey(xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
    }
}

/// How an order executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OrderType {
    /// Limit, good till canceled: matches what it can, rests the remainder.
    Limit = 0,
    /// Immediate or cancel: matches what it can at its limit, cancels the rest.
    Ioc = 1,
    /// Fill or kill: fills completely at its limit at once, or does nothing.
    Fok = 2,
    /// Market: matches at any price until filled, out of liquidity or out of funds.
    Market = 3,
    /// Post-only limit: rests without matching; rejected if it would cross.
    PostOnly = 4,
}

impl OrderType {
    /// Wire code.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Inverse of [`OrderType::as_u8`].
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0 => OrderType::Limit,
            1 => OrderType::Ioc,
            2 => OrderType::Fok,
            3 => OrderType::Market,
            4 => OrderType::PostOnly,
            _ => return None,
        })
    }

    /// Name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderType::Limit => "limit",
            OrderType::Ioc => "ioc",
            OrderType::Fok => "fok",
            OrderType::Market => "market",
            OrderType::PostOnly => "post_only",
        }
    }
}

/// Self-trade prevention: what happens when an order would trade against a resting order
/// of the same account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum StpMode {
    /// Cancel the resting order and keep matching the incoming one.
    #[default]
    CancelResting = 0,
    /// Cancel the rest of the incoming order.
    CancelIncoming = 1,
    /// Cancel both.
    CancelBoth = 2,
    /// Allow the self-trade.
    None = 3,
}

impl StpMode {
    /// Wire code.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Inverse of [`StpMode::as_u8`].
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0 => StpMode::CancelResting,
            1 => StpMode::CancelIncoming,
            2 => StpMode::CancelBoth,
            3 => StpMode::None,
            _ => return None,
        })
    }
}

/// A new order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// Unique id, allocated by the submitter (see `EngineHandle::allocate_order_id`).
    pub order_id: OrderId,
    /// The client's own id for the order, echoed in every report (0 = none).
    pub client_order_id: u64,
    /// Owner.
    pub account: AccountId,
    /// Market.
    pub instrument: InstrumentId,
    /// Buy or sell.
    pub side: Side,
    /// Execution style.
    pub order_type: OrderType,
    /// Limit price (ignored for market orders).
    pub price: Price,
    /// Quantity.
    pub qty: Qty,
    /// Self-trade prevention.
    pub stp: StpMode,
    /// The client's idempotency key, if it sent one: a second order with the same key
    /// from the same account is refused (see [`crate::idempotency`]).
    pub key: Option<IdempotencyKey>,
}

/// Cancel a resting order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelOrder {
    /// The order.
    pub order_id: OrderId,
    /// Must own the order; anyone else gets `UnknownOrder`.
    pub account: AccountId,
    /// The order's market.
    pub instrument: InstrumentId,
}

/// Change a resting order's price and/or quantity. Lowering the quantity at the same price
/// keeps time priority; any other change loses it (and may trade).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplaceOrder {
    /// The order.
    pub order_id: OrderId,
    /// Must own the order.
    pub account: AccountId,
    /// The order's market.
    pub instrument: InstrumentId,
    /// New limit price.
    pub price: Price,
    /// New quantity.
    pub qty: ReplaceQty,
}

/// What a replace's quantity means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplaceQty {
    /// What remains to fill after the replace, whatever filled before it. A replace that
    /// crosses a fill in flight adds to what the sender meant to trade (10 open, 8 fill,
    /// "open 5" leaves 5 more): the synthetic feed's form.
    Open(Qty),
    /// The order's whole quantity, what filled before the replace included (FIX's
    /// `OrderQty`): what remains is this less what has filled when the engine applies it,
    /// so no fill in flight adds to it. At or below what has filled, the order ends: a
    /// `Replaced` report with nothing open, then `Canceled` (`UserCanceled`).
    Total(Qty),
}

impl ReplaceQty {
    /// The quantity given, whichever its meaning.
    pub fn given(self) -> Qty {
        match self {
            ReplaceQty::Open(q) | ReplaceQty::Total(q) => q,
        }
    }
}

/// Credit (positive) or debit (negative) an account: the only way money enters or leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Account.
    pub account: AccountId,
    /// Asset.
    pub asset: AssetId,
    /// Signed amount; a debit cannot exceed the available balance.
    pub amount: Amount,
    /// Echoed in the report so the submitter can match it.
    pub request_id: u64,
}

/// Halt or resume trading in one instrument (an operator's decision, journaled like any
/// command). While halted, new orders and replaces are rejected with `InstrumentHalted`;
/// cancels still work, so users can always take risk off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TradingStatus {
    /// The market.
    pub instrument: InstrumentId,
    /// `true`: halt; `false`: resume.
    pub halted: bool,
}

/// What a command asks the engine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Place an order.
    New(NewOrder),
    /// Cancel an order.
    Cancel(CancelOrder),
    /// Replace an order.
    Replace(ReplaceOrder),
    /// Deposit or withdraw.
    Transfer(Transfer),
    /// Halt or resume an instrument.
    Status(TradingStatus),
}

/// A command with its ingest timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// Assigned at ingest; every event the command causes carries it.
    pub ts: UnixNanos,
    /// The request.
    pub kind: CommandKind,
}

impl Command {
    /// The instrument the command is about, if any (transfers are not).
    pub fn instrument(&self) -> Option<InstrumentId> {
        match &self.kind {
            CommandKind::New(o) => Some(o.instrument),
            CommandKind::Cancel(c) => Some(c.instrument),
            CommandKind::Replace(r) => Some(r.instrument),
            CommandKind::Transfer(_) => None,
            CommandKind::Status(s) => Some(s.instrument),
        }
    }
}

/// Why a command (or part of an order) was refused or ended. Stable codes: they go on the
/// wire and into client code. A report with no reason carries `Option::<RejectReason>::None`,
/// which encodes as code 0 ([`RejectReason::code_of`]) and is named `"none"`
/// ([`RejectReason::name_of`]), as it always was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RejectReason {
    // 0 is no reason: see `NO_REASON_CODE`.
    /// The instrument id is not in this engine.
    UnknownInstrument = 1,
    /// The account id is outside the account table.
    UnknownAccount = 2,
    /// Quantity is zero or negative.
    NonPositiveQty = 3,
    /// Quantity is not a multiple of the lot size, or above the maximum.
    InvalidQty = 4,
    /// Price is not a multiple of the tick size.
    InvalidPrice = 5,
    /// Price is outside the instrument's band.
    PriceOutOfBand = 6,
    /// The account cannot fund the order (or the debit).
    InsufficientFunds = 7,
    /// No such open order for this account.
    UnknownOrder = 8,
    /// The order id is already in use.
    DuplicateOrderId = 9,
    /// A post-only order would have crossed.
    WouldCross = 10,
    /// A fill-or-kill order could not be filled completely.
    FokUnfillable = 11,
    /// Self-trade prevention ended the order.
    SelfTrade = 12,
    /// A market or IOC order found nothing (more) to trade with.
    NoLiquidity = 13,
    /// Amount arithmetic would overflow.
    Overflow = 14,
    /// The replace changes nothing.
    NoChange = 15,
    /// Canceled at the owner's request.
    UserCanceled = 16,
    /// The engine's order capacity is exhausted.
    BookFull = 17,
    /// The asset id is not in the asset table.
    UnknownAsset = 18,
    /// Trading in the instrument is halted (cancels still work).
    InstrumentHalted = 19,
    /// An order with this idempotency key and the same content exists already (a retry):
    /// nothing new was placed.
    DuplicateRequest = 20,
    /// This idempotency key was used for a different order.
    IdempotencyKeyReused = 21,
}

/// The code of "no reason" in events and files (never a [`RejectReason`]'s).
const NO_REASON_CODE: u8 = 0;
/// The name of "no reason" in JSON.
const NO_REASON_NAME: &str = "none";

impl RejectReason {
    /// Wire code (never 0: that is no reason).
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Inverse of [`RejectReason::as_u8`] (`None` for 0, which is no reason, and for codes
    /// no reason has).
    pub fn from_u8(code: u8) -> Option<Self> {
        use RejectReason::*;
        Some(match code {
            1 => UnknownInstrument,
            2 => UnknownAccount,
            3 => NonPositiveQty,
            4 => InvalidQty,
            5 => InvalidPrice,
            6 => PriceOutOfBand,
            7 => InsufficientFunds,
            8 => UnknownOrder,
            9 => DuplicateOrderId,
            10 => WouldCross,
            11 => FokUnfillable,
            12 => SelfTrade,
            13 => NoLiquidity,
            14 => Overflow,
            15 => NoChange,
            16 => UserCanceled,
            17 => BookFull,
            18 => UnknownAsset,
            19 => InstrumentHalted,
            20 => DuplicateRequest,
            21 => IdempotencyKeyReused,
            _ => return None,
        })
    }

    /// The code of a report's reason, 0 when it has none (the event and history byte).
    pub fn code_of(reason: Option<RejectReason>) -> u8 {
        reason.map_or(NO_REASON_CODE, RejectReason::as_u8)
    }

    /// Inverse of [`RejectReason::code_of`]: `Err` for a code no reason has.
    pub fn from_code(code: u8) -> Result<Option<RejectReason>, UnknownReasonCode> {
        match code {
            NO_REASON_CODE => Ok(None),
            _ => RejectReason::from_u8(code).map(Some).ok_or(UnknownReasonCode(code)),
        }
    }

    /// The JSON name of a report's reason, `"none"` when it has none.
    pub fn name_of(reason: Option<RejectReason>) -> &'static str {
        reason.map_or(NO_REASON_NAME, RejectReason::as_str)
    }

    /// Stable snake_case code used in JSON.
    pub fn as_str(self) -> &'static str {
        use RejectReason::*;
        match self {
            UnknownInstrument => "unknown_instrument",
            UnknownAccount => "unknown_account",
            NonPositiveQty => "non_positive_qty",
            InvalidQty => "invalid_qty",
            InvalidPrice => "invalid_price",
            PriceOutOfBand => "price_out_of_band",
            InsufficientFunds => "insufficient_funds",
            UnknownOrder => "unknown_order",
            DuplicateOrderId => "duplicate_order_id",
            WouldCross => "would_cross",
            FokUnfillable => "fok_unfillable",
            SelfTrade => "self_trade",
            NoLiquidity => "no_liquidity",
            Overflow => "overflow",
            NoChange => "no_change",
            UserCanceled => "user_canceled",
            BookFull => "book_full",
            UnknownAsset => "unknown_asset",
            InstrumentHalted => "instrument_halted",
            DuplicateRequest => "duplicate_request",
            IdempotencyKeyReused => "idempotency_key_reused",
        }
    }
}

/// A reason code that no [`RejectReason`] has (and that is not 0, no reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown reject reason code {0}")]
pub struct UnknownReasonCode(pub u8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..=255u8 {
            if let Some(r) = RejectReason::from_u8(code) {
                assert_eq!(r.as_u8(), code);
            }
            if let Some(t) = OrderType::from_u8(code) {
                assert_eq!(t.as_u8(), code);
            }
            if let Some(s) = StpMode::from_u8(code) {
                assert_eq!(s.as_u8(), code);
            }
        }
        assert_eq!(RejectReason::from_u8(17), Some(RejectReason::BookFull));
        assert_eq!(RejectReason::from_u8(19), Some(RejectReason::InstrumentHalted));
        assert_eq!(RejectReason::from_u8(21), Some(RejectReason::IdempotencyKeyReused));
        assert_eq!(RejectReason::from_u8(22), None);
    }

    #[test]
    fn no_reason_is_code_0_and_named_none() {
        assert_eq!(RejectReason::from_u8(0), None);
        assert_eq!(RejectReason::code_of(None), 0);
        assert_eq!(RejectReason::from_code(0), Ok(None));
        assert_eq!(RejectReason::name_of(None), "none");
        for code in 1..=255u8 {
            match RejectReason::from_u8(code) {
                Some(r) => {
                    assert_eq!(RejectReason::from_code(code), Ok(Some(r)));
                    assert_eq!(RejectReason::code_of(Some(r)), code);
                    assert_eq!(RejectReason::name_of(Some(r)), r.as_str());
                    assert_ne!(r.as_str(), "none");
                }
                None => assert_eq!(RejectReason::from_code(code), Err(UnknownReasonCode(code))),
            }
        }
    }
}
