//! Order entry shared by REST and WebSocket: validate a request against the instrument,
//! allocate the order id, register a waiter, queue the command and wait for the engine's
//! verdict. Transport code only turns the outcome into an HTTP response or a WS reply.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tickgate_engine::runtime::{EngineHandle, SubmitError};
use tickgate_engine::types::{format_fixed, parse_fixed};
use tickgate_engine::{
    AccountId, CancelOrder, CommandKind, ExecKind, Instrument, InstrumentId, NewOrder, OrderId,
    OrderType, Price, Qty, ReplaceOrder, Side, StpMode,
};

use crate::orders::{Awaiting, OrderStore, OrderView, Status};

/// How long a request waits for the engine's answer.
pub const ENGINE_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A refused or failed request: HTTP status, stable code, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TradeError {
    /// Status for REST (WebSocket replies carry only the code).
    pub status: StatusCode,
    /// Stable error code.
    pub code: &'static str,
    /// Explanation.
    pub message: String,
    /// Set when the engine did not answer in time although the command was queued: it may
    /// still execute, as this order.
    pub queued: Option<OrderId>,
}

impl TradeError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        TradeError { status, code, message: message.into(), queued: None }
    }

    fn invalid(message: impl Into<String>) -> Self {
        TradeError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }

    fn unknown_order() -> Self {
        TradeError::new(StatusCode::NOT_FOUND, "unknown_order", "no such order")
    }

    fn submit(e: SubmitError) -> Self {
        let code = match e {
            SubmitError::QueueFull => "engine_busy",
            SubmitError::JournalFailed => "journal_failed",
            _ => "engine_unavailable",
        };
        TradeError::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
    }

    fn timeout(order: OrderId) -> Self {
        let message = format!(
            "no answer from the engine in time; the request was queued and may still take \
             effect on order {}: look it up, or retry with the same Idempotency-Key",
            order.0
        );
        let mut e = TradeError::new(StatusCode::SERVICE_UNAVAILABLE, "engine_timeout", message);
        e.queued = Some(order);
        e
    }
}

/// A new order as clients send it (REST body, or the fields of `order.new`).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NewOrderRequest {
    /// Instrument symbol.
    pub symbol: String,
    /// `buy` or `sell`.
    pub side: String,
    /// `limit`, `ioc`, `fok`, `market` or `post_only`.
    #[serde(rename = "type")]
    pub order_type: String,
    /// Decimal limit price (not for market orders).
    pub price: Option<String>,
    /// Decimal quantity.
    pub qty: String,
    /// The client's own id, echoed in every report.
    pub client_order_id: Option<u64>,
    /// Self-trade prevention mode.
    pub stp: Option<String>,
}

/// A replace: new price and/or new open quantity (missing: unchanged).
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaceRequest {
    /// New decimal limit price.
    pub price: Option<String>,
    /// New decimal open quantity.
    pub qty: Option<String>,
}

fn side_of(s: &str) -> Option<Side> {
    match s {
        "buy" => Some(Side::Buy),
        "sell" => Some(Side::Sell),
        _ => None,
    }
}

fn type_of(s: &str) -> Option<OrderType> {
    Some(match s {
        "limit" => OrderType::Limit,
        "ioc" => OrderType::Ioc,
        "fok" => OrderType::Fok,
        "market" => OrderType::Market,
        "post_only" => OrderType::PostOnly,
        _ => return None,
    })
}

fn stp_of(s: Option<&str>) -> Option<StpMode> {
    Some(match s {
        None | Some("cancel_resting") => StpMode::CancelResting,
        Some("cancel_incoming") => StpMode::CancelIncoming,
        Some("cancel_both") => StpMode::CancelBoth,
        Some("none") => StpMode::None,
        Some(_) => return None,
    })
}

/// The JSON form of an order.
pub fn order_json(o: &OrderView, i: &Instrument) -> Value {
    let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
    json!({
        "id": o.id.0,
        "client_order_id": o.client_order_id,
        "symbol": i.spec.symbol,
        "side": o.side.as_str(),
        "type": o.order_type.as_str(),
        "price": format_fixed(o.price.0, pp),
        "open_qty": format_fixed(o.leaves.0, qp),
        "filled_qty": format_fixed(o.filled.0, qp),
        "status": o.status.as_str(),
        "reason": o.reason.as_str(),
        "updated_ts": o.updated_ts,
    })
}

/// The engine and the users' order store: what order entry needs.
#[derive(Clone, Debug)]
pub struct Trading {
    /// The engine.
    pub engine: EngineHandle,
    /// Orders, fills and waiters.
    pub orders: Arc<OrderStore>,
}

impl Trading {
    /// The instrument with id `id`.
    pub fn instrument(&self, id: InstrumentId) -> Option<&Instrument> {
        self.engine.instruments().get(id.0 as usize)
    }

    fn view_json(&self, account: AccountId, id: OrderId) -> Result<Value, TradeError> {
        let o = self.orders.order(account, id).ok_or_else(|| {
            TradeError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "order not recorded")
        })?;
        let i = self.instrument(o.instrument).ok_or_else(TradeError::unknown_order)?;
        Ok(order_json(&o, i))
    }

    /// Places an order; `Ok` is the accepted order's JSON. A rejection by the engine is a
    /// `422` whose code is the engine's reason.
    pub async fn place(
        &self,
        account: AccountId,
        r: &NewOrderRequest,
    ) -> Result<Value, TradeError> {
        let i = self.engine.instrument_by_symbol(&r.symbol).ok_or_else(|| {
            TradeError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_symbol",
                format!("no instrument `{}`", r.symbol),
            )
        })?;
        let (Some(side), Some(order_type), Some(stp)) =
            (side_of(&r.side), type_of(&r.order_type), stp_of(r.stp.as_deref()))
        else {
            return Err(TradeError::invalid("side is buy|sell; type is limit|ioc|fok|market|post_only; stp is cancel_resting|cancel_incoming|cancel_both|none"));
        };
        let qty = parse_qty(i, &r.qty)?;
        let price = match (order_type, r.price.as_deref()) {
            (OrderType::Market, _) => 0,
            (_, Some(p)) => parse_price(i, p)?,
            (_, None) => return Err(TradeError::invalid("price is required for this order type")),
        };
        let id = self.engine.allocate_order_id();
        let command = CommandKind::New(NewOrder {
            order_id: id,
            client_order_id: r.client_order_id.unwrap_or(0),
            account,
            instrument: i.id,
            side,
            order_type,
            price: Price(price),
            qty: Qty(qty),
            stp,
        });
        let report = self.submit_and_wait(id, Awaiting::New, command).await?;
        if report.kind == ExecKind::Rejected {
            return Err(TradeError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                report.reason.as_str(),
                "the engine rejected the order",
            ));
        }
        self.view_json(account, id)
    }

    /// Cancels an open order of `account`.
    pub async fn cancel(&self, account: AccountId, id: OrderId) -> Result<Value, TradeError> {
        let order = self.open_order(account, id)?;
        let command = CommandKind::Cancel(CancelOrder {
            order_id: order.id,
            account,
            instrument: order.instrument,
        });
        let report = self.submit_and_wait(order.id, Awaiting::Cancel, command).await?;
        if report.kind != ExecKind::Canceled {
            return Err(TradeError::new(
                StatusCode::CONFLICT,
                "order_closed",
                "the order closed before the cancel arrived",
            ));
        }
        self.view_json(account, order.id)
    }

    /// Replaces an open order's price and/or open quantity. Lowering the quantity at the
    /// same price keeps its place in the queue; anything else loses it (and may trade).
    pub async fn replace(
        &self,
        account: AccountId,
        id: OrderId,
        r: &ReplaceRequest,
    ) -> Result<Value, TradeError> {
        if r.price.is_none() && r.qty.is_none() {
            return Err(TradeError::invalid("give a new price, a new qty, or both"));
        }
        let order = self.open_order(account, id)?;
        let i = self.instrument(order.instrument).ok_or_else(TradeError::unknown_order)?;
        let price = match &r.price {
            Some(p) => parse_price(i, p)?,
            None => order.price.0,
        };
        let qty = match &r.qty {
            Some(q) => parse_qty(i, q)?,
            None => order.leaves.0,
        };
        let command = CommandKind::Replace(ReplaceOrder {
            order_id: order.id,
            account,
            instrument: order.instrument,
            price: Price(price),
            qty: Qty(qty),
        });
        let report = self.submit_and_wait(order.id, Awaiting::Replace, command).await?;
        if report.kind == ExecKind::Rejected {
            let status = if report.reason == tickgate_engine::RejectReason::UnknownOrder {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            return Err(TradeError::new(
                status,
                report.reason.as_str(),
                "the engine refused the replace",
            ));
        }
        self.view_json(account, order.id)
    }

    fn open_order(&self, account: AccountId, id: OrderId) -> Result<OrderView, TradeError> {
        // Another user's order answers exactly like a missing one.
        let order = self.orders.order(account, id).ok_or_else(TradeError::unknown_order)?;
        if order.status != Status::Open {
            return Err(TradeError::new(
                StatusCode::CONFLICT,
                "order_closed",
                format!("the order is {}", order.status.as_str()),
            ));
        }
        Ok(order)
    }

    async fn submit_and_wait(
        &self,
        id: OrderId,
        awaiting: Awaiting,
        command: CommandKind,
    ) -> Result<tickgate_engine::ExecReport, TradeError> {
        let wait = self.orders.wait(id, awaiting);
        if let Err(e) = self.engine.submit(command) {
            self.orders.forget(id, wait.token);
            return Err(TradeError::submit(e));
        }
        match tokio::time::timeout(ENGINE_ANSWER_TIMEOUT, wait.answer).await {
            Ok(Ok(report)) => Ok(report),
            _ => {
                self.orders.forget(id, wait.token);
                Err(TradeError::timeout(id))
            }
        }
    }
}

fn parse_qty(i: &Instrument, text: &str) -> Result<i64, TradeError> {
    parse_fixed(text, i.spec.qty_precision).ok_or_else(|| {
        TradeError::invalid(format!(
            "qty must be a decimal with at most {} decimals",
            i.spec.qty_precision
        ))
    })
}

fn parse_price(i: &Instrument, text: &str) -> Result<i64, TradeError> {
    parse_fixed(text, i.spec.price_precision).ok_or_else(|| {
        TradeError::invalid(format!(
            "price must be a decimal with at most {} decimals",
            i.spec.price_precision
        ))
    })
}
