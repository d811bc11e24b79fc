//! JSON views of users' orders and fills, one rendering for REST answers and WebSocket
//! order replies.

use serde_json::{json, Value};
use tickgate_engine::types::format_fixed;
use tickgate_engine::{Instrument, OrderType, Price};

use crate::orders::{FillView, OrderView, Status};
use crate::trading::CancelAllOutcome;

/// The JSON form of an order. `seq` is the sequence of the report that last changed it
/// (the account's execution report sequence): of two views of one order, the one with the
/// higher `seq` is newer. A rejected order's price is `null` when it was not a valid price
/// for the instrument (that is why it was rejected).
pub fn order_json(o: &OrderView, i: &Instrument) -> Value {
    let qp = i.spec.qty_precision;
    let price = order_price(o.price, o.order_type, o.status == Status::Rejected, i);
    json!({
        "id": o.id.0,
        "client_order_id": o.client_order_id,
        "symbol": i.spec.symbol,
        "side": o.side.as_str(),
        "type": o.order_type.as_str(),
        "price": price,
        "open_qty": format_fixed(o.leaves.0, qp),
        "filled_qty": format_fixed(o.filled.0, qp),
        "status": o.status.as_str(),
        "reason": tickgate_engine::RejectReason::name_of(o.reason),
        "updated_ts": o.updated_ts,
        "seq": o.seq,
    })
}

/// An order's price as its views show it (REST and the WebSocket `orders` channel alike):
/// `None` (JSON `null`) for a market order (it has none) and for a rejected order whose
/// price was not a valid price for the instrument, the reason it was rejected.
pub fn order_price(
    price: Price,
    order_type: OrderType,
    rejected: bool,
    i: &Instrument,
) -> Option<String> {
    let spec = &i.spec;
    let valid = price >= spec.price_min
        && price <= spec.price_max
        && price.0 % spec.tick_size.0.max(1) == 0;
    (order_type != OrderType::Market && (!rejected || valid))
        .then(|| format_fixed(price.0, spec.price_precision))
}

/// An order given the instruments it may be of (`null` for one of none: orders exist
/// only on known instruments).
pub fn order_in(o: &OrderView, instruments: &[Instrument]) -> Value {
    instruments.get(o.instrument.0 as usize).map_or(Value::Null, |i| order_json(o, i))
}

/// The JSON form of a cancel-all's outcome (REST's body, the fields of WebSocket's
/// `order.canceled_all`).
pub fn cancel_all_json(outcome: &CancelAllOutcome, instruments: &[Instrument]) -> Value {
    let canceled: Vec<Value> = outcome.canceled.iter().map(|o| order_in(o, instruments)).collect();
    let not_canceled: Vec<Value> = outcome
        .not_canceled
        .iter()
        .map(|(id, e)| json!({ "order_id": id.0, "code": e.code.as_str(), "message": e.message }))
        .collect();
    json!({ "canceled": canceled, "not_canceled": not_canceled })
}

/// The JSON form of a fill.
pub fn fill_json(f: &FillView, i: &Instrument) -> Value {
    json!({
        "id": f.id,
        "ts": f.ts,
        "order_id": f.order_id.0,
        "symbol": i.spec.symbol,
        "side": f.side.as_str(),
        "price": format_fixed(f.price.0, i.spec.price_precision),
        "qty": format_fixed(f.qty.0, i.spec.qty_precision),
    })
}
