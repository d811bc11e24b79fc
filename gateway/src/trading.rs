//! Order entry shared by REST and WebSocket: validate a request against the instrument,
//! allocate the order id, claim its idempotency key, register a waiter, queue the command
//! and wait for the engine's verdict (the order as the whole command left it). Transport
//! code only turns the outcome into an HTTP response or a WS reply.
//!
//! Idempotency: a request with a key that this account used before for the same order
//! (same symbol, side, type, price, quantity, `client_order_id` and `stp`) is answered
//! with that order as it stands now, also after any restart (the key is journaled with
//! the order); with the same key for a different order it is refused with
//! `idempotency_key_reused`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tickgate_engine::runtime::{EngineHandle, SubmitError};
use tickgate_engine::types::parse_fixed;
use tickgate_engine::{
    AccountId, CancelOrder, CommandKind, ExecKind, IdempotencyKey, Instrument, InstrumentId,
    KeyRecord, NewOrder, OrderId, OrderType, Price, Qty, RejectReason, ReplaceOrder, ReplaceQty,
    Side, StpMode, UnixNanos,
};

use crate::cluster::route::{Route, RouteError};
use crate::error::{ApiError, ErrorCode};
use crate::idempotency::{Claim, KeyCache, IDEMPOTENCY_KEY_BYTES_MAX};
use crate::orders::{Awaiting, OrderStore, OrderView, Status, Verdict};

/// How long a request waits for the engine's answer.
pub const ENGINE_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What an engine refusal means, for the error's message (its code is the reason's name).
fn explain(reason: RejectReason) -> &'static str {
    use RejectReason::*;
    match reason {
        UnknownInstrument => "no such instrument",
        UnknownAccount => "no such account",
        NonPositiveQty => "the quantity must be above zero",
        InvalidQty => {
            "the quantity is not a whole number of lots, or is above the instrument's qty_max \
             (GET /api/v1/instruments)"
        }
        InvalidPrice => "the price is not on the instrument's tick grid (GET /api/v1/instruments)",
        PriceOutOfBand => {
            "the price is outside the instrument's band, price_min to price_max \
             (GET /api/v1/instruments)"
        }
        InsufficientFunds => "not enough available balance to hold for it",
        UnknownOrder => "no such order",
        DuplicateOrderId => "an order with this id exists",
        WouldCross => "a post-only order would have traded on arrival",
        FokUnfillable => "a fill-or-kill order could not be filled in full at once",
        SelfTrade => "it would have traded with an order of the same account",
        NoLiquidity => "nothing rests on the other side to trade with",
        Overflow => "an amount would overflow the engine's fixed-point range",
        NoChange => "the replace changes nothing",
        UserCanceled => "canceled by its owner",
        BookFull => "the instrument's book holds as many orders as it can",
        UnknownAsset => "no such asset",
        InstrumentHalted => "trading in the instrument is halted",
        DuplicateRequest => "a request with this idempotency key was placed already",
        IdempotencyKeyReused => "the idempotency key was used for another request",
    }
}

/// Constructors of the errors order entry gives.
impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidParameter, message)
    }

    fn unknown_order() -> Self {
        ApiError::new(ErrorCode::UnknownOrder, "no such order")
    }

    /// The engine's refusal. A refusal always carries a reason (the engine's contract); one
    /// without is the engine's fault, not the client's.
    fn rejected(reason: Option<RejectReason>, what: &str) -> Self {
        match reason {
            Some(reason) => ApiError::new(
                ErrorCode::Rejected(reason),
                format!("the engine refused the {what}: {}", explain(reason)),
            ),
            None => {
                tracing::error!(what, "the engine refused a command without a reason");
                ApiError::new(ErrorCode::Internal, format!("the engine refused the {what}"))
            }
        }
    }

    fn key_reused() -> Self {
        ApiError::new(
            ErrorCode::IdempotencyKeyReused,
            "this idempotency key was used for a different order",
        )
    }

    /// The engine did not take the command.
    pub fn submit(e: SubmitError) -> Self {
        let code = match e {
            SubmitError::QueueFull => ErrorCode::EngineBusy,
            SubmitError::JournalFailed => ErrorCode::JournalFailed,
            _ => ErrorCode::EngineUnavailable,
        };
        ApiError::new(code, e.to_string())
    }

    fn timeout(order: OrderId) -> Self {
        let message = format!(
            "no answer from the engine in time; the request was queued and may still take \
             effect on order {}: look it up, or retry with the same Idempotency-Key",
            order.0
        );
        let mut e = ApiError::new(ErrorCode::EngineTimeout, message).about(order);
        e.queued = Some(order);
        e
    }
}

/// Cancels a cancel-all keeps in flight at once: enough to keep the engine's queue busy,
/// few enough to leave it room for everyone else.
pub const CANCEL_ALL_IN_FLIGHT: usize = 64;

/// What a cancel-all did.
#[derive(Debug, Default)]
pub struct CancelAllOutcome {
    /// The orders it canceled, as the cancels left them, newest first.
    pub canceled: Vec<OrderView>,
    /// The orders it could not cancel, newest first, with why (`order_closed`: filled or
    /// canceled meanwhile; `engine_timeout`: may still be canceled; ...).
    pub not_canceled: Vec<(OrderId, ApiError)>,
}

impl CancelAllOutcome {
    /// The one error the whole request is, when no cancel could even be queued and every
    /// one was refused for the same reason of the server's (the journal failed, the
    /// engine is unavailable or busy): a client that reads only the status must not take
    /// a kill switch that did nothing for one that worked. `None` when any order was
    /// canceled, nothing was open, or the refusals differ or may still take effect.
    pub fn refused_whole(&self) -> Option<ApiError> {
        let ((_, first), rest) = self.not_canceled.split_first()?;
        // Never `engine_timeout`: that cancel may still take effect.
        let unavailable = matches!(
            first.code,
            ErrorCode::JournalFailed | ErrorCode::EngineUnavailable | ErrorCode::EngineBusy
        );
        let whole = self.canceled.is_empty()
            && unavailable
            && rest.iter().all(|(_, e)| e.code == first.code);
        whole.then(|| {
            let message = format!("no order was canceled: {}", first.message);
            ApiError { message, order_id: None, ..first.clone() }
        })
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

/// A replace: new price and/or new quantity (missing: unchanged). The quantity is either
/// what stays open (`qty`) or the order's whole quantity, what has filled included
/// (`total_qty`, FIX's `OrderQty`); either way the engine gets a total, so a fill that
/// reaches it before the replace counts against it and never adds to the order.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaceRequest {
    /// New decimal limit price.
    pub price: Option<String>,
    /// New decimal open quantity, as of the order this node knows (what has filled by
    /// then plus this is the order's new total).
    pub qty: Option<String>,
    /// New decimal total quantity, what has filled included; at or below what has filled
    /// by the time the engine takes it, the order ends (`canceled`, `user_canceled`).
    pub total_qty: Option<String>,
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

/// The engine and the users' order store: what order entry needs.
#[derive(Clone, Debug)]
pub struct Trading {
    /// The engine (a replica on a gateway node: for reading).
    pub engine: EngineHandle,
    /// Where commands go: this engine, or the engine node.
    pub route: Route,
    /// Orders, fills and waiters.
    pub orders: Arc<OrderStore>,
    /// Idempotency keys (this process's copy of the engine's).
    pub keys: Arc<KeyCache>,
    /// Open orders an account may have (`--open-orders-max`): a new one past it is refused
    /// `limit_exceeded` (the engine's books and every node's store hold them all).
    pub open_orders_max: usize,
    /// New orders of each account on their way to the engine: counted with the open ones,
    /// so that orders sent at once cannot all pass the bound on the same count.
    pub placing: Arc<crate::limits::Counts<u32>>,
}

impl Trading {
    fn now(&self) -> UnixNanos {
        self.engine.clock().now()
    }

    /// The instrument with id `id`.
    pub fn instrument(&self, id: InstrumentId) -> Option<&Instrument> {
        self.engine.instruments().get(id.0 as usize)
    }

    /// The order as its command left it (the verdict's), or as it stands now when the
    /// verdict has none.
    fn settled(
        &self,
        account: AccountId,
        id: OrderId,
        verdict: Verdict,
    ) -> Result<OrderView, ApiError> {
        match verdict.order {
            Some(o) if self.instrument(o.instrument).is_some() => Ok(o),
            _ => self.view(account, id),
        }
    }

    fn view(&self, account: AccountId, id: OrderId) -> Result<OrderView, ApiError> {
        let o = self
            .orders
            .order(account, id)
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "order not recorded"))?;
        self.instrument(o.instrument).ok_or_else(ApiError::unknown_order)?;
        Ok(o)
    }

    /// Places an order; `Ok` is the order as the engine's whole verdict left it
    /// (a market order that filled is `filled`). A rejection by the engine is a `422`
    /// whose code is the engine's reason. `key`: the client's idempotency key, if any.
    pub async fn place(
        &self,
        account: AccountId,
        r: &NewOrderRequest,
        key: Option<&str>,
    ) -> Result<OrderView, ApiError> {
        let key = key.map(key_of).transpose()?;
        // Validated before an id is taken (on a gateway node, ids come from the engine node).
        let mut order = self.new_order(account, r, key, OrderId(0))?;
        order.order_id = self.route.order_id().await.map_err(route_error)?;
        // A keyed order's key and fingerprint (unkeyed orders compute none).
        let keyed = key.map(|key| (key, tickgate_engine::idempotency::fingerprint(&order)));
        if let Some((key, fingerprint)) = keyed {
            let mut looked_again = false;
            loop {
                match self.keys.claim(account, key, fingerprint, order.order_id, self.now()) {
                    Claim::New => {
                        let claimed = (order.instrument, order.order_id);
                        if let Some(answer) =
                            self.placed_elsewhere(account, key, fingerprint, claimed).await
                        {
                            return answer;
                        }
                        break;
                    }
                    // The claim's order may never have been: look once, then claim again.
                    Claim::Retry(id, at)
                        if !looked_again
                            && self
                                .claim_outdated(account, key, order.instrument, id, at)
                                .await =>
                    {
                        looked_again = true;
                    }
                    Claim::Retry(id, at) => return self.replay(account, id, at),
                    Claim::Reused => return Err(ApiError::key_reused()),
                }
            }
        }
        let id = order.order_id;
        // Here, where a retry of a keyed order was answered already: a retry is never
        // refused for the orders placed since. The place is held until the answer, when
        // the order is in the store as open (or not at all): for that moment it counts
        // twice, never not at all.
        let room = self.open_orders_max.saturating_sub(self.orders.open_count(account));
        let Some(_placing) = self.placing.take(account.0, room) else {
            if let Some((key, _)) = keyed {
                self.keys.release(account, key, id);
            }
            let message = format!(
                "at most {} open orders per account: cancel some first",
                self.open_orders_max
            );
            return Err(ApiError::new(ErrorCode::LimitExceeded, message));
        };
        let verdict = match self.submit_and_wait(id, Awaiting::New, CommandKind::New(order)).await {
            // Placed through another gateway, whose request the engine node had first: that
            // order is the answer (this node's replica has it, or soon will).
            Err(Failure::Repeat(first, at)) => {
                if let Some((key, fingerprint)) = keyed {
                    self.keys.release(account, key, id);
                    let record =
                        tickgate_engine::KeyRecord { key, order_id: first, fingerprint, ts: at };
                    self.keys.load([(account, record)]);
                }
                self.caught_up().await;
                return self.replay(account, first, at);
            }
            Err(Failure::Error(e)) => {
                if let (Some(key), None) = (key, e.queued) {
                    // Never reached the engine: the key is free for a retry.
                    self.keys.release(account, key, id);
                }
                return Err(e);
            }
            Ok(verdict) => verdict,
        };
        let report = verdict.report;
        match (report.kind, report.reason, key) {
            // The engine knew the key and this process did not: the claim made above is
            // wrong (the key is another order's): give it up, and learn the engine's.
            (ExecKind::Rejected, Some(RejectReason::DuplicateRequest), Some(key)) => {
                self.keys.release(account, key, id);
                self.replay_from_engine(account, order.instrument, key).await
            }
            (ExecKind::Rejected, Some(RejectReason::IdempotencyKeyReused), Some(key)) => {
                self.keys.release(account, key, id);
                Err(ApiError::key_reused())
            }
            // The order has its id (listed, `rejected`): the answer names it.
            (ExecKind::Rejected, reason, _) => Err(ApiError::rejected(reason, "order").about(id)),
            _ => self.settled(account, id, verdict),
        }
    }

    /// Validates `r` and builds the engine command (with order id `order_id`).
    fn new_order(
        &self,
        account: AccountId,
        r: &NewOrderRequest,
        key: Option<IdempotencyKey>,
        order_id: OrderId,
    ) -> Result<NewOrder, ApiError> {
        let i = self.engine.instrument_by_symbol(&r.symbol).ok_or_else(|| {
            ApiError::new(ErrorCode::UnknownSymbol, format!("no instrument `{}`", r.symbol))
        })?;
        let (Some(side), Some(order_type), Some(stp)) =
            (side_of(&r.side), type_of(&r.order_type), stp_of(r.stp.as_deref()))
        else {
            return Err(ApiError::invalid("side is buy|sell; type is limit|ioc|fok|market|post_only; stp is cancel_resting|cancel_incoming|cancel_both|none"));
        };
        let qty = parse_qty(i, &r.qty)?;
        let price = match (order_type, r.price.as_deref()) {
            (OrderType::Market, None) => 0,
            // A price the engine would ignore is refused rather than taken for a limit.
            (OrderType::Market, Some(_)) => {
                return Err(ApiError::invalid(
                    "a market order takes no price (for a limit price, use type ioc)",
                ))
            }
            (_, Some(p)) => parse_price(i, p)?,
            (_, None) => return Err(ApiError::invalid("price is required for this order type")),
        };
        Ok(NewOrder {
            order_id,
            client_order_id: r.client_order_id.unwrap_or(0),
            account,
            instrument: i.id,
            side,
            order_type,
            price: Price(price),
            qty: Qty(qty),
            stp,
            key,
        })
    }

    /// The answer to a retried keyed request: the order its first request created, as it
    /// stands now.
    fn replay(
        &self,
        account: AccountId,
        id: OrderId,
        at: UnixNanos,
    ) -> Result<OrderView, ApiError> {
        match self.orders.order(account, id) {
            Some(o) if o.status == Status::Rejected => {
                Err(ApiError::rejected(o.reason, "order").about(id))
            }
            Some(_) => self.view(account, id),
            // Placed long ago and no longer kept (see `ORDERS_KEPT`).
            None if self.now().0.saturating_sub(at.0)
                > 2 * ENGINE_ANSWER_TIMEOUT.as_nanos() as u64 =>
            {
                Err(ApiError::new(
                    ErrorCode::OrderForgotten,
                    format!("this key placed order {}, which is no longer kept", id.0),
                ))
            }
            None => {
                let mut e = ApiError::new(
                    ErrorCode::RequestInProgress,
                    format!("this key placed order {}; its outcome is not known yet", id.0),
                );
                e.queued = Some(id);
                Err(e)
            }
        }
    }

    /// On a gateway node, the answer to a keyed request whose key this process has not
    /// seen but its replica has: the key was used through another gateway (a client
    /// retrying through another node). This process's copy follows only the keys placed
    /// through it; the replica's table is the engine's. Sent on to the engine instead, the
    /// retry would be refused as a `duplicate_request`, a `rejected` report on the
    /// owner's `orders` channel for an order that never existed. A retry that comes before
    /// its first request reached this replica still goes to the engine (which answers it
    /// rightly, with that report). `None`: go on and place the order.
    async fn placed_elsewhere(
        &self,
        account: AccountId,
        key: IdempotencyKey,
        fingerprint: u64,
        (instrument, claimed): (InstrumentId, OrderId),
    ) -> Option<Result<OrderView, ApiError>> {
        if !matches!(self.route, Route::Remote(_)) {
            return None; // the engine is this process: every key went through it
        }
        // Not answered (a busy replica): the engine stays the authority.
        let record = self.engine_key_record(account, instrument, key).await.ok()??;
        self.keys.release(account, key, claimed);
        self.keys.load([(account, record)]);
        Some(if record.fingerprint == fingerprint {
            self.replay(account, record.order_id, record.ts)
        } else {
            Err(ApiError::key_reused())
        })
    }

    /// On a gateway node, whether this process's claim of `key` for order `id` (made at
    /// `at`) is outdated, and if so, replaced by what the engine knows: a claim whose
    /// request got no answer (`engine_timeout`) while the engine node's answer may still
    /// come. Once the engine node can no longer take that request (its deadline, plus
    /// [`crate::cluster::CLOCK_SKEW_MAX`] between the nodes' clocks, has passed) and this node has caught
    /// up with it, the replica's key table tells: no record, the order never was (the claim
    /// is given up: the retry places it); a record of another order, the key was placed
    /// through another node meanwhile (its record replaces the claim). Without the look, a
    /// retry here would be answered `request_in_progress`, then `order_forgotten`, forever.
    async fn claim_outdated(
        &self,
        account: AccountId,
        key: IdempotencyKey,
        instrument: InstrumentId,
        id: OrderId,
        at: UnixNanos,
    ) -> bool {
        let deadline = crate::cluster::REQUEST_TIMEOUT + crate::cluster::CLOCK_SKEW_MAX;
        if !matches!(self.route, Route::Remote(_))
            || self.orders.order(account, id).is_some()
            || self.now().0.saturating_sub(at.0) <= deadline.as_nanos() as u64
            || !self.caught_up().await
            || self.orders.order(account, id).is_some()
        {
            return false;
        }
        match self.engine_key_record(account, instrument, key).await {
            Ok(None) => self.keys.release(account, key, id),
            Ok(Some(record)) if record.order_id != id => {
                self.keys.release(account, key, id);
                self.keys.load([(account, record)]);
            }
            _ => return false,
        }
        true
    }

    /// The engine knew a key this process did not (it never should): ask it which order
    /// the key belongs to.
    async fn replay_from_engine(
        &self,
        account: AccountId,
        instrument: InstrumentId,
        key: IdempotencyKey,
    ) -> Result<OrderView, ApiError> {
        let Some(record) = self.engine_key_record(account, instrument, key).await? else {
            return Err(ApiError::rejected(Some(RejectReason::DuplicateRequest), "order"));
        };
        self.keys.load([(account, record)]);
        self.replay(account, record.order_id, record.ts)
    }

    /// The record of `key` in this process's engine (the replica, on a gateway node): the
    /// order it placed, if the engine remembers it.
    async fn engine_key_record(
        &self,
        account: AccountId,
        instrument: InstrumentId,
        key: IdempotencyKey,
    ) -> Result<Option<KeyRecord>, ApiError> {
        let engine = self.engine.clone();
        let shard = engine.shard_of(instrument).unwrap_or(0);
        match tokio::task::spawn_blocking(move || engine.key_record(shard, account, key)).await {
            Ok(Ok(record)) => Ok(record),
            Ok(Err(e)) => Err(ApiError::submit(e)),
            Err(_) => Ok(None),
        }
    }

    /// Cancels an open order of `account`.
    pub async fn cancel(&self, account: AccountId, id: OrderId) -> Result<OrderView, ApiError> {
        let order = self.open_order_caught_up(account, id).await?;
        let command = CommandKind::Cancel(CancelOrder {
            order_id: order.id,
            account,
            instrument: order.instrument,
        });
        let verdict = self.submit_and_wait(order.id, Awaiting::Cancel, command).await?;
        if verdict.report.kind != ExecKind::Canceled {
            // Refused as unknown: it filled or was canceled meanwhile.
            return Err(ApiError::new(
                ErrorCode::OrderClosed,
                "the order closed before the cancel arrived",
            ));
        }
        self.settled(account, order.id, verdict)
    }

    /// Cancels every order of `account` open when it is called (of one instrument, or of
    /// all), [`CANCEL_ALL_IN_FLIGHT`] at a time. Each cancel is the single cancel's: an
    /// order that closed meanwhile, or one the engine did not answer in time, is listed with
    /// its error rather than failing the rest. Orders placed after the call are not
    /// covered (the engine sees each cancel on its own, not one mass cancel).
    pub async fn cancel_all(
        &self,
        account: AccountId,
        instrument: Option<InstrumentId>,
    ) -> CancelAllOutcome {
        self.cancel_these(account, |o| instrument.is_none_or(|i| o.instrument == i)).await
    }

    /// [`Trading::cancel_all`] of the open orders `which` picks.
    pub async fn cancel_these(
        &self,
        account: AccountId,
        which: impl Fn(&OrderView) -> bool,
    ) -> CancelAllOutcome {
        use futures_util::StreamExt;
        // Every order acknowledged anywhere (through another gateway too) is covered.
        self.caught_up().await;
        let open =
            self.orders.orders(account, None, |o| o.status == Status::Open && which(o), usize::MAX);
        let results: Vec<(OrderId, Result<OrderView, ApiError>)> = futures_util::stream::iter(open)
            .map(|o| async move { (o.id, self.cancel(account, o.id).await) })
            .buffer_unordered(CANCEL_ALL_IN_FLIGHT)
            .collect()
            .await;
        let mut outcome = CancelAllOutcome::default();
        for (id, result) in results {
            match result {
                Ok(order) => outcome.canceled.push(order),
                Err(e) => outcome.not_canceled.push((id, e)),
            }
        }
        // Newest first, as the order lists are.
        outcome.canceled.sort_unstable_by_key(|o| std::cmp::Reverse(o.id));
        outcome.not_canceled.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        outcome
    }

    /// Replaces an open order's price and/or quantity (see [`ReplaceRequest`]). Lowering
    /// the quantity at the same price keeps its place in the queue; anything else loses
    /// it (and may trade).
    pub async fn replace(
        &self,
        account: AccountId,
        id: OrderId,
        r: &ReplaceRequest,
    ) -> Result<OrderView, ApiError> {
        if r.qty.is_some() && r.total_qty.is_some() {
            return Err(ApiError::invalid("give qty or total_qty, not both"));
        }
        if r.price.is_none() && r.qty.is_none() && r.total_qty.is_none() {
            return Err(ApiError::invalid("give a new price, a new qty (or total_qty), or both"));
        }
        let order = self.open_order_caught_up(account, id).await?;
        let i = self.instrument(order.instrument).ok_or_else(ApiError::unknown_order)?;
        let price = match &r.price {
            Some(p) => parse_price(i, p)?,
            None => order.price.0,
        };
        // Always a total: an open quantity, or none, counts from what has filled as this
        // node knows it, and the engine takes away what has filled when it applies the
        // replace. Sent as an open quantity, a replace that crossed a fill in flight would
        // add that fill back to the order (10 open, 8 fill, "5" would leave 5 more).
        let total = match (&r.total_qty, &r.qty) {
            (Some(t), _) => parse_qty(i, t)?,
            (None, Some(q)) => match parse_qty(i, q)? {
                q if q <= 0 => {
                    return Err(ApiError::rejected(Some(RejectReason::NonPositiveQty), "replace"))
                }
                q => {
                    order.filled.0.checked_add(q).ok_or_else(|| {
                        ApiError::rejected(Some(RejectReason::InvalidQty), "replace")
                    })?
                }
            },
            (None, None) => order.filled.0 + order.leaves.0,
        };
        let command = CommandKind::Replace(ReplaceOrder {
            order_id: order.id,
            account,
            instrument: order.instrument,
            price: Price(price),
            qty: ReplaceQty::Total(Qty(total)),
        });
        let verdict = self.submit_and_wait(order.id, Awaiting::Replace, command).await?;
        let report = verdict.report;
        if report.kind == ExecKind::ReplaceRejected {
            if report.reason == Some(RejectReason::UnknownOrder) {
                // Its own order, open when the replace left: a fill or a cancel got there
                // first (as a cancel that loses the race says).
                return Err(ApiError::new(
                    ErrorCode::OrderClosed,
                    "the order closed before the replace arrived",
                ));
            }
            return Err(ApiError::rejected(report.reason, "replace"));
        }
        self.settled(account, order.id, verdict)
    }

    /// [`Trading::open_order`]; on a gateway node, an order it does not know yet is looked
    /// for again once it has caught up with the engine node (another gateway may have
    /// acknowledged it a moment ago).
    async fn open_order_caught_up(
        &self,
        account: AccountId,
        id: OrderId,
    ) -> Result<OrderView, ApiError> {
        match self.open_order(account, id) {
            Err(e) if e.code == ErrorCode::UnknownOrder && self.caught_up().await => {
                self.open_order(account, id)
            }
            found => found,
        }
    }

    /// Waits, on a gateway node, until this node knows every command the engine node had
    /// applied when asked (see [`Route::caught_up`]); whether it does.
    pub async fn caught_up(&self) -> bool {
        self.route.caught_up(&self.orders).await
    }

    /// The order `id` of `account`; on a gateway node, looked for again once caught up when
    /// not known yet. Another user's order is `None`, as a missing one.
    pub async fn order_caught_up(&self, account: AccountId, id: OrderId) -> Option<OrderView> {
        match self.orders.order(account, id) {
            None if self.caught_up().await => self.orders.order(account, id),
            found => found,
        }
    }

    fn open_order(&self, account: AccountId, id: OrderId) -> Result<OrderView, ApiError> {
        // Another user's order answers exactly like a missing one.
        let order = self.orders.order(account, id).ok_or_else(ApiError::unknown_order)?;
        if order.status != Status::Open {
            return Err(ApiError::new(
                ErrorCode::OrderClosed,
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
    ) -> Result<Verdict, Failure> {
        let mut wait = self.orders.wait(id, awaiting);
        let submitted = tokio::time::Instant::now();
        let unanswered = match self.route.submit(command).await {
            Ok(()) => false,
            // No word from the engine node: it may have queued it; its reports tell.
            Err(RouteError::NoAnswer) => true,
            Err(e) => {
                self.orders.forget(id, wait.token);
                return Err(match e {
                    RouteError::Repeat(first, at) => Failure::Repeat(first, at),
                    e => Failure::Error(route_error(e)),
                });
            }
        };
        let give_up = submitted + ENGINE_ANSWER_TIMEOUT;
        if unanswered {
            // Past its deadline (and the clocks' difference) the engine node no longer
            // takes the request: once this node has caught up with it, no report means it
            // was not carried out, a definite answer rather than "may still take effect"
            // five seconds later (an engine node frozen for three seconds).
            let refused_after = crate::cluster::REQUEST_TIMEOUT + crate::cluster::CLOCK_SKEW_MAX;
            let sure = tokio::time::sleep_until(submitted + refused_after);
            tokio::select! {
                // (A receiver is not polled again once it answered, whatever it said.)
                answer = &mut wait.answer => {
                    return answer.map_err(|_| {
                        self.orders.forget(id, wait.token);
                        Failure::Error(ApiError::timeout(id))
                    });
                }
                _ = sure => {
                    if self.caught_up().await {
                        if let Ok(verdict) = wait.answer.try_recv() {
                            return Ok(verdict);
                        }
                        self.orders.forget(id, wait.token);
                        let message = "the engine node did not take the request in time: it \
                                       was not carried out (retry)";
                        return Err(Failure::Error(ApiError::new(
                            ErrorCode::EngineUnavailable,
                            message,
                        )));
                    }
                }
            }
        }
        match tokio::time::timeout_at(give_up, &mut wait.answer).await {
            Ok(Ok(verdict)) => Ok(verdict),
            _ => {
                self.orders.forget(id, wait.token);
                Err(Failure::Error(ApiError::timeout(id)))
            }
        }
    }
}

/// Why a command got no verdict.
enum Failure {
    /// The answer to give.
    Error(ApiError),
    /// A keyed order that repeats one placed through another gateway (that order, and the
    /// engine time of its claim): not queued.
    Repeat(OrderId, UnixNanos),
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> ApiError {
        match failure {
            Failure::Error(e) => e,
            // Only a new keyed order is ever a repeat, and `place` answers it itself.
            Failure::Repeat(first, at) => route_error(RouteError::Repeat(first, at)),
        }
    }
}

/// The error of a command that did not reach the engine.
pub fn route_error(e: RouteError) -> ApiError {
    match e {
        RouteError::Refused(e) => ApiError::submit(e),
        RouteError::Unreachable(why) => ApiError::new(ErrorCode::EngineUnavailable, why),
        RouteError::NoAnswer => {
            ApiError::new(ErrorCode::EngineUnavailable, "the engine node did not answer in time")
        }
        RouteError::KeyReused => ApiError::key_reused(),
        RouteError::Repeat(first, _) => {
            ApiError::rejected(Some(RejectReason::DuplicateRequest), "order").about(first)
        }
    }
}

/// The engine's key for a client's key text: 1 to 128 printable ASCII characters, visible
/// at both ends.
fn key_of(text: &str) -> Result<IdempotencyKey, ApiError> {
    // The OpenAPI pattern `^[!-~]([ -~]*[!-~])?$`: spaces inside, not at either end (an
    // HTTP header could not carry them there, a JSON field could).
    let printable = text.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    let ends = text.bytes().next().zip(text.bytes().last());
    let visible_ends = ends.is_some_and(|(a, z)| a.is_ascii_graphic() && z.is_ascii_graphic());
    if text.len() > IDEMPOTENCY_KEY_BYTES_MAX || !printable || !visible_ends {
        return Err(ApiError::invalid(format!(
            "an idempotency key is 1 to {IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII characters, \
             the first and last visible (spaces only inside)"
        )));
    }
    Ok(IdempotencyKey::from_text(text))
}

/// Whether `text` is a decimal as the API documents it: `-?([0-9]+(\.[0-9]*)?|\.[0-9]+)`.
pub fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    !(int_part.is_empty() && frac_part.is_empty())
        && int_part.bytes().all(|b| b.is_ascii_digit())
        && frac_part.bytes().all(|b| b.is_ascii_digit())
}

/// The longest decimal string taken (the OpenAPI document's `maxLength`): any price or
/// quantity an instrument takes fits in far fewer.
pub const DECIMAL_CHARS_MAX: usize = 40;

/// A decimal field of a request: not a decimal at all, or longer than
/// [`DECIMAL_CHARS_MAX`], is `400 invalid_parameter`; a decimal
/// this instrument cannot hold (too many decimals, out of range) is `422` with the engine's
/// code for the field (`invalid_price`, `invalid_qty`): the request is well-formed, the
/// instrument refuses it. Zeros past the precision are the same value and are fine
/// (`1000.000000` is `1000.00` at 2 decimals). An out-of-range message names the
/// instrument's `bounds` (the field's name and value for each), without them the
/// fixed-point limit.
fn parse_within(
    text: &str,
    precision: u8,
    field: &str,
    bounds: Option<&[(&str, i64)]>,
) -> Result<i64, ApiError> {
    if !is_decimal(text) {
        return Err(ApiError::invalid(format!("{field} must be a decimal string")));
    }
    if text.len() > DECIMAL_CHARS_MAX {
        let message = format!("{field} is longer than {DECIMAL_CHARS_MAX} characters");
        return Err(ApiError::invalid(message));
    }
    let text = without_surplus_zeros(text, precision);
    parse_fixed(text, precision).ok_or_else(|| {
        use tickgate_engine::types::format_fixed;
        let reason =
            if field == "price" { RejectReason::InvalidPrice } else { RejectReason::InvalidQty };
        let decimals = text.split_once('.').map_or(0, |(_, fraction)| fraction.len());
        let message = if decimals > usize::from(precision) {
            format!("{field} takes at most {precision} decimals for this instrument")
        } else if let Some(bounds) = bounds {
            let named: Vec<String> = bounds
                .iter()
                .map(|(name, v)| format!("{name} {}", format_fixed(*v, precision)))
                .collect();
            format!("{field} is out of range for this instrument ({})", named.join(", "))
        } else {
            let max = format_fixed(i64::MAX, precision);
            format!("{field} is out of range for this instrument (at most {max})")
        };
        ApiError::new(ErrorCode::Rejected(reason), message)
    })
}

/// `text` without the zeros that end its fraction past `precision` decimals.
fn without_surplus_zeros(text: &str, precision: u8) -> &str {
    let Some((whole, fraction)) = text.split_once('.') else { return text };
    let keep = usize::from(precision);
    if fraction.len() <= keep || fraction.bytes().skip(keep).any(|b| b != b'0') {
        return text;
    }
    match (keep, whole.trim_start_matches('-')) {
        // `.000` at no decimals: nothing left but zero.
        (0, "") => "0",
        (0, _) => whole,
        _ => &text[..whole.len() + 1 + keep],
    }
}

fn parse_qty(i: &Instrument, text: &str) -> Result<i64, ApiError> {
    let bounds = [("qty_max", i.spec.qty_max.0)];
    parse_within(text, i.spec.qty_precision, "qty", Some(&bounds))
}

/// A price for instrument `i` (its precision; range and grid are the engine's to check).
pub fn parse_price(i: &Instrument, text: &str) -> Result<i64, ApiError> {
    let bounds = [("price_min", i.spec.price_min.0), ("price_max", i.spec.price_max.0)];
    parse_within(text, i.spec.price_precision, "price", Some(&bounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decimal the instrument cannot hold says why: too many decimals, or too large.
    #[test]
    fn a_refused_decimal_says_whether_it_has_too_many_decimals_or_is_too_large() {
        assert_eq!(parse_within("12.3400", 4, "qty", None).ok(), Some(123_400));
        let refused = |text: &str| parse_within(text, 4, "qty", None).expect_err(text);
        let e = refused("1.00001");
        assert_eq!(e.code, ErrorCode::Rejected(RejectReason::InvalidQty));
        assert_eq!(e.message, "qty takes at most 4 decimals for this instrument");
        for text in ["99999999999999999999999", "1844674407370955.1616", "-922337203685478"] {
            let e = refused(text);
            assert_eq!(e.code, ErrorCode::Rejected(RejectReason::InvalidQty), "{text}");
            assert_eq!(
                e.message, "qty is out of range for this instrument (at most 922337203685477.5807)",
                "{text}"
            );
        }
        let e = parse_within("99999999999999999999999", 2, "price", None).expect_err("too large");
        assert_eq!(e.code, ErrorCode::Rejected(RejectReason::InvalidPrice));
        assert!(e.message.starts_with("price is out of range"), "{}", e.message);
        assert_eq!(
            parse_within("1e5", 4, "qty", None).expect_err("not a decimal").code,
            ErrorCode::InvalidParameter
        );
    }

    /// Zeros past the precision change nothing; any other digit there is refused.
    #[test]
    fn zeros_past_the_precision_are_the_same_value() {
        for (text, value) in [
            ("1000.000000", 100_000),
            ("-1.500", -150),
            ("7.10", 710),
            ("7.1", 710),
            ("5.", 500),
            (".5000", 50),
        ] {
            assert_eq!(parse_within(text, 2, "price", None).ok(), Some(value), "{text}");
        }
        for (text, value) in [("12.000", 12), ("-3.0", -3), (".00", 0), ("5.", 5)] {
            assert_eq!(parse_within(text, 0, "qty", None).ok(), Some(value), "{text}");
        }
        for text in ["1000.001", "1.0000001", "0.0050"] {
            let e = parse_within(text, 2, "price", None).expect_err(text);
            assert_eq!(e.message, "price takes at most 2 decimals for this instrument", "{text}");
        }
        // The documented maxLength holds, even for zeros that would change nothing.
        let long = format!("100.{}", "0".repeat(DECIMAL_CHARS_MAX));
        let e = parse_within(&long, 2, "price", None).expect_err("too long");
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::InvalidParameter, "price is longer than 40 characters")
        );
        assert!(parse_within(&format!("100.{}", "0".repeat(36)), 2, "price", None).is_ok());
    }

    #[test]
    fn idempotency_keys_follow_the_documented_pattern() {
        for ok in ["k", "a b", "order-1/retry#2", &"x".repeat(128)] {
            assert!(key_of(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", " a", "a ", " ", "tab\there", "caf\u{e9}", &"x".repeat(129)] {
            assert_eq!(
                key_of(bad).map(|_| ()).map_err(|e| e.code),
                Err(ErrorCode::InvalidParameter),
                "{bad:?}"
            );
        }
    }

    /// A cancel-all is one error only when no cancel could be queued, all for one reason
    /// of the server's.
    #[test]
    fn a_cancel_all_that_queued_nothing_is_the_servers_error() {
        let outcome = |codes: &[ErrorCode]| CancelAllOutcome {
            canceled: Vec::new(),
            not_canceled: codes
                .iter()
                .enumerate()
                .map(|(i, &code)| {
                    (OrderId(i as u64 + 1), ApiError::new(code, "why").about(OrderId(1)))
                })
                .collect(),
        };
        assert_eq!(outcome(&[]).refused_whole(), None, "nothing open: 200, nothing canceled");
        let failed = outcome(&[ErrorCode::JournalFailed; 3]).refused_whole().expect("one error");
        assert_eq!((failed.code, failed.status().as_u16()), (ErrorCode::JournalFailed, 503));
        assert_eq!(
            (failed.message.as_str(), failed.order_id),
            ("no order was canceled: why", None)
        );
        for mixed in [
            &[ErrorCode::JournalFailed, ErrorCode::OrderClosed][..],
            &[ErrorCode::EngineUnavailable, ErrorCode::EngineBusy],
            &[ErrorCode::EngineTimeout],
            &[ErrorCode::OrderClosed],
        ] {
            assert_eq!(outcome(mixed).refused_whole(), None, "{mixed:?}");
        }
    }

    #[test]
    fn an_engine_refusal_says_what_its_reason_means() {
        let e = ApiError::rejected(Some(RejectReason::PriceOutOfBand), "order");
        assert_eq!(e.code, ErrorCode::Rejected(RejectReason::PriceOutOfBand));
        assert!(e.message.starts_with("the engine refused the order: the price is outside"));
        assert!(e.message.contains("price_min to price_max"), "{}", e.message);
        let e = ApiError::rejected(Some(RejectReason::NonPositiveQty), "replace");
        assert_eq!(e.message, "the engine refused the replace: the quantity must be above zero");
        assert_eq!(ApiError::rejected(None, "order").code, ErrorCode::Internal);
    }
}
