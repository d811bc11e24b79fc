//! What a connection answers: control messages (subscribe, unsubscribe, ping, auth),
//! order entry, and the private `orders` channel.

use super::*;
use tickgate_engine::{ExecReport, TransferReport};

impl Conn {
    /// A WebSocket ping: its pong while the client is within its inbound rate (a ping
    /// costs [`PING_COST`]). Beyond the rate it goes unanswered (a client pinging that often
    /// is not keeping a connection alive), and far beyond it the connection closes with
    /// 1008, as for messages.
    pub(super) fn ping(&mut self, payload: &[u8]) {
        if self.rate.take(PING_COST) {
            self.push(protocol::frame(Opcode::Pong, payload).into(), 0);
        } else {
            self.close_if_flooding();
        }
    }

    /// A pong that is no read receipt: within the inbound rate it costs [`PING_COST`];
    /// far beyond it the connection closes with 1008.
    pub(super) fn unasked_pong(&mut self) {
        if !self.rate.take(PING_COST) {
            self.close_if_flooding();
        }
    }

    /// After a refusal for the inbound rate: closes with 1008 once the refusals in the
    /// window pass twice the burst. Whether it did.
    fn close_if_flooding(&mut self) -> bool {
        if self.rate.violations <= 2 * self.ctx.limits.inbound_burst {
            return false;
        }
        self.ctx.metrics.ws_protocol_closes_total.fetch_add(1, Ordering::Relaxed);
        self.set_closing(Closing::Send(close::POLICY, "inbound message rate far over the limit"));
        true
    }

    /// One control message: rate limit, parse, answer.
    pub(super) fn text(&mut self, text: &[u8]) {
        let ctx = Arc::clone(&self.ctx);
        let limits = &ctx.limits;
        self.ctx.metrics.ws_requests_total.fetch_add(1, Ordering::Relaxed);
        let request = control::parse(text, &mut self.scratch);
        // A request naming many channels costs more: snapshots are the expensive part.
        let cost = match &request {
            Ok(Request::Subscribe { channels, .. }) => 1.0 + channels.len() as f64 / 8.0,
            _ => 1.0,
        };
        if !self.rate.take(cost) {
            if !self.close_if_flooding() {
                let message =
                    format!("at most {} messages per second", limits.inbound_rate_per_sec);
                let id = request.as_ref().ok().and_then(Request::id).cloned();
                self.error(RequestError { id, code: ErrorCode::RateLimited, message });
            }
            return;
        }
        match request {
            Ok(Request::Subscribe { id, channels, depth }) => self.subscribe(id, channels, depth),
            Ok(Request::Unsubscribe { id, channels }) => self.unsubscribe(id, channels),
            Ok(Request::Ping { id }) => {
                let ts = self.ctx.links.clock.now().0;
                self.push(control::reply("pong", &id, serde_json::json!({ "ts": ts })), 0);
            }
            Ok(Request::Auth { id, token }) => self.auth(id, &token),
            Ok(Request::CancelOnDisconnect { id, enabled, scope }) => {
                self.cancel_on_disconnect(id, enabled, scope)
            }
            Ok(
                r @ (Request::OrderNew { .. }
                | Request::OrderCancel { .. }
                | Request::OrderCancelAll { .. }
                | Request::OrderReplace { .. }),
            ) => self.order_entry(r),
            Err(e) => self.error(e),
        }
    }

    fn auth(&mut self, id: Option<RequestId>, token: &str) {
        if self.account.is_some() {
            let message = "this connection is already authenticated".to_string();
            return self.error(RequestError { id, code: ErrorCode::AlreadyAuthenticated, message });
        }
        match self.ctx.tokens.verify(token) {
            Ok(claims) => {
                let slot = match self.ctx.user_slot(claims.acc) {
                    Ok(slot) => slot,
                    Err(message) => {
                        let code = ErrorCode::LimitExceeded;
                        return self.error(RequestError { id, code, message });
                    }
                };
                self.user_slot = Some(slot);
                self.account = Some(AccountId(claims.acc));
                let fields = serde_json::json!({ "username": claims.sub, "account": claims.acc });
                let tokens = Arc::clone(&self.ctx.tokens);
                self.session = Some(crate::auth::SessionWatch::new(tokens, claims));
                self.push(control::reply("authenticated", &id, fields), 0);
            }
            Err(e) => {
                let message = e.to_string();
                self.error(RequestError { id, code: ErrorCode::Unauthorized, message });
            }
        }
    }

    /// Cancel-on-disconnect: when this connection ends (for any reason but the server's
    /// own shutdown), the orders it placed that are still open (`scope` `connection`, the
    /// default), or every open order of its account (`account`), are canceled.
    fn cancel_on_disconnect(
        &mut self,
        id: Option<RequestId>,
        enabled: bool,
        scope: Option<DisconnectScope>,
    ) {
        if self.account.is_none() {
            let message = "cancel_on_disconnect needs an authenticated connection".into();
            return self.error(RequestError { id, code: ErrorCode::Unauthorized, message });
        }
        let scope = scope.unwrap_or(DisconnectScope::Connection);
        self.cancel_on_disconnect = enabled.then_some(scope);
        let name = match scope {
            DisconnectScope::Connection => "connection",
            DisconnectScope::Account => "account",
        };
        let fields = serde_json::json!({ "enabled": enabled, "scope": name });
        self.push(control::reply("cancel_on_disconnect", &id, fields), 0);
    }

    /// Remembers an order this connection placed; at [`PLACED_TRACKED_MAX`], forgets those
    /// that closed since (and, with that many open, remembers no more).
    pub(super) fn remember_placed(&mut self, order: OrderId) {
        if self.placed.len() >= PLACED_TRACKED_MAX {
            let (orders, account) = (&self.ctx.trading.orders, self.account);
            self.placed.retain(|id| {
                account.and_then(|a| orders.order(a, *id)).is_some_and(|o| o.status == Status::Open)
            });
        }
        if self.placed.len() < PLACED_TRACKED_MAX {
            self.placed.insert(order);
        }
    }

    /// Runs an order request on its own task (the engine answers asynchronously); the
    /// answer comes back through `answers`, in the order the engine gives them.
    fn order_entry(&mut self, request: Request) {
        let id = request.id().cloned();
        let Some(account) = self.account else {
            let message = "order entry needs an authenticated connection (?token= or auth)".into();
            return self.error(RequestError { id, code: ErrorCode::Unauthorized, message });
        };
        // One budget per user, whatever the connections and REST: ten sockets with one
        // token do not get ten times the rate. Cancels are not counted: a user who spent
        // the budget must still be able to take risk off (a kill switch never waits).
        let counted = matches!(request, Request::OrderNew { .. } | Request::OrderReplace { .. });
        let over = counted.then(|| self.ctx.user_rate.check(account.0).err()).flatten();
        if let Some(wait) = over {
            let message = format!(
                "too many requests for this user (REST and WebSocket order requests share one \
                 rate); retry in {} ms",
                wait.as_millis().max(1)
            );
            return self.error(RequestError { id, code: ErrorCode::RateLimited, message });
        }
        let answers = self
            .answers
            .get_or_insert_with(|| tokio::sync::mpsc::channel(ANSWERS_IN_FLIGHT_MAX))
            .0
            .clone();
        let trading = self.ctx.trading.clone();
        let metrics = Arc::clone(&self.ctx.metrics);
        // Registered now, in the order the requests came: a cancel-all waits for the ones
        // before it (a kill switch covers what was sent before it, answered or not).
        let ticket = self.in_flight.open();
        tokio::spawn(async move {
            if let Request::OrderCancelAll { symbol, .. } = &request {
                ticket.earlier_done().await;
                let frame = cancel_all(&trading, account, id, symbol.as_deref()).await;
                if frame.is_err() {
                    metrics.ws_errors_total.fetch_add(1, Ordering::Relaxed);
                }
                let frame = frame.unwrap_or_else(|e| control::error_reply(&e));
                let _ = answers.send(Answer { frame, placed: None }).await;
                return;
            }
            let (op, result) = match &request {
                Request::OrderNew { order, key, .. } => {
                    ("order.accepted", trading.place(account, order, key.as_deref()).await)
                }
                Request::OrderCancel { order_id, .. } => {
                    ("order.canceled", trading.cancel(account, OrderId(*order_id)).await)
                }
                Request::OrderReplace { order_id, replace, .. } => {
                    ("order.replaced", trading.replace(account, OrderId(*order_id), replace).await)
                }
                _ => return,
            };
            drop(ticket);
            let mut placed = None;
            let frame = match result {
                Ok(order) => {
                    if matches!(request, Request::OrderNew { .. }) && order.status == Status::Open {
                        placed = Some(order.id);
                    }
                    let order = crate::views::order_in(&order, trading.engine.instruments());
                    control::reply(op, &id, serde_json::json!({ "order": order }))
                }
                Err(e) => {
                    metrics.ws_errors_total.fetch_add(1, Ordering::Relaxed);
                    let order = e.order_id;
                    let e = RequestError { id, code: e.code, message: e.message };
                    control::error_reply_about(&e, order)
                }
            };
            // The connection may be gone by now: then nobody needs the answer (but
            // cancel-on-disconnect may need the order it placed).
            let _ = answers.send(Answer { frame, placed }).await;
        });
    }

    /// One report of the `orders` channel (JSON text in both formats: it is low-rate).
    pub(super) fn report(&mut self, report: Result<AccountReport, broadcast::error::RecvError>) {
        match report {
            Ok(r) => {
                let frame = execution_frame(&r, &self.ctx.trading);
                self.push(frame, 1);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let fields = serde_json::json!({ "channel": "orders", "missed": missed });
                self.push(control::reply("orders_gap", &None, fields), 0);
            }
            Err(broadcast::error::RecvError::Closed) => self.orders = None,
        }
    }

    /// Subscribes to or leaves the private `orders` channel (it must be alone in its
    /// request).
    fn orders_channel(&mut self, id: Option<RequestId>, subscribe: bool) {
        let Some(account) = self.account else {
            let message = "the orders channel needs an authenticated connection".into();
            return self.error(RequestError { id, code: ErrorCode::Unauthorized, message });
        };
        if subscribe {
            self.orders = Some(self.ctx.trading.orders.subscribe(account));
            let ack =
                serde_json::json!({ "channels": [{ "channel": "orders", "account": account.0 }] });
            self.push(control::reply("subscribed", &id, ack), 0);
        } else if self.orders.take().is_some() {
            self.push(
                control::reply("unsubscribed", &id, serde_json::json!({ "channels": ["orders"] })),
                0,
            );
        } else {
            let message = "not subscribed to `orders`".into();
            self.error(RequestError { id, code: ErrorCode::NotSubscribed, message });
        }
    }

    /// Resolves channel names; all-or-nothing, so a failed request changes nothing.
    fn resolve(
        &self,
        id: &Option<RequestId>,
        names: &[String],
    ) -> Result<Vec<Arc<Channel>>, RequestError> {
        let directory = &self.ctx.directory;
        names
            .iter()
            .map(|name| {
                let err = |code, message: String| RequestError { id: id.clone(), code, message };
                if let Some(channel) = directory.get(name) {
                    return Ok(Arc::clone(channel));
                }
                let unknown = || {
                    Err(err(
                        ErrorCode::UnknownChannel,
                        format!("unknown channel `{name}`: expected book.<SYM>, bbo.<SYM>, trades.<SYM> or candles.<SYM>.<1s|1m|5m|1h>"),
                    ))
                };
                let symbol = match name.split_once('.') {
                    Some(("candles", rest)) => match rest.rsplit_once('.') {
                        Some((symbol, interval))
                            if crate::candles::INTERVALS.iter().any(|(n, _)| *n == interval) =>
                        {
                            symbol
                        }
                        _ => return unknown(),
                    },
                    Some((prefix, symbol)) if ChannelKind::from_prefix(prefix).is_some() => symbol,
                    _ => return unknown(),
                };
                debug_assert!(!directory.has_symbol(symbol));
                Err(err(ErrorCode::UnknownSymbol, format!("unknown symbol `{symbol}`")))
            })
            .collect()
    }

    fn subscribe(&mut self, id: Option<RequestId>, names: Vec<String>, depth: usize) {
        if names.iter().any(|n| n == ORDERS_CHANNEL) {
            if names.len() > 1 {
                let message = "subscribe to `orders` in a request of its own".into();
                return self.error(RequestError { id, code: ErrorCode::Malformed, message });
            }
            return self.orders_channel(id, true);
        }
        let mut channels = match self.resolve(&id, &names) {
            Ok(c) => c,
            Err(e) => return self.error(e),
        };
        // A name given twice is one subscription: one ack, one snapshot.
        let mut seen = Vec::with_capacity(channels.len());
        channels.retain(|c| {
            let first = !seen.contains(&c.id);
            seen.push(c.id);
            first
        });
        let max = self.ctx.limits.subscriptions_per_connection_max;
        // One critical section: the writer must not send a channel's deltas before its
        // snapshot, and every new subscription starts exactly after its snapshot.
        let link = Arc::clone(&self.link);
        let mut st = link.lock();
        let new = channels.iter().filter(|c| !st.subs.iter().any(|s| s.channel.id == c.id)).count();
        if st.subs.len() + new > max {
            drop(st);
            return self.error(RequestError {
                id,
                code: ErrorCode::LimitExceeded,
                message: format!("at most {max} subscriptions per connection"),
            });
        }
        if !self.ctx.writers.has_room(link.id, new) {
            drop(st);
            let message = "too many subscriptions being set up at once; retry shortly".into();
            return self.error(RequestError { id, code: ErrorCode::LimitExceeded, message });
        }
        let json = self.format == Format::Json;
        let starts: Vec<_> = channels
            .into_iter()
            .map(|channel| {
                let existing = st.subs.iter().position(|s| s.channel.id == channel.id);
                let start = match existing {
                    Some(_) => channel.restart(json, depth),
                    None => channel.subscribe(json, depth),
                };
                (channel, existing, start)
            })
            .collect();
        // The snapshots go out whatever the market data's hold: beyond what the
        // connection's allowance covers they are lent by the shared pool, or refused.
        let bytes: u64 = starts.iter().map(|(_, _, start)| start.snapshot.len() as u64).sum();
        if !link.room_for_snapshots(&mut st, bytes) {
            drop(st);
            for (channel, existing, _) in &starts {
                if existing.is_none() {
                    channel.unsubscribe(json);
                }
            }
            let message = format!(
                "these snapshots ({} KiB) do not fit what this connection may have unread \
                 now: read what was sent first, or subscribe to fewer channels or a smaller \
                 depth at a time",
                bytes.div_ceil(1024)
            );
            return self.error(RequestError { id, code: ErrorCode::LimitExceeded, message });
        }
        let mut acks = Vec::with_capacity(starts.len());
        let mut snapshots = Vec::with_capacity(starts.len());
        let mut joined = Vec::with_capacity(new);
        for (channel, existing, start) in starts {
            acks.push(serde_json::json!({
                "channel": channel.name,
                "channel_id": channel.id,
                "seq": start.seq,
                "price_precision": channel.instrument.spec.price_precision,
                "qty_precision": channel.instrument.spec.qty_precision,
            }));
            let index = channel.index;
            let sub = Sub {
                channel,
                cursor: start.cursor,
                depth,
                last_seq: start.seq,
                last_sent: Instant::now(),
            };
            match existing {
                Some(at) => st.subs[at] = sub, // resubscribe: fresh snapshot, same slot
                None => {
                    st.subs.push(sub);
                    joined.push(index);
                }
            }
            snapshots.push(start.snapshot);
        }
        st.push(control::reply("subscribed", &id, serde_json::json!({ "channels": acks })), 0);
        for s in snapshots {
            st.push(s, 1);
        }
        drop(st);
        for channel in joined {
            self.ctx.writers.subscribe(link.id, channel);
        }
    }

    fn unsubscribe(&mut self, id: Option<RequestId>, names: Vec<String>) {
        if names.len() == 1 && names[0] == ORDERS_CHANNEL {
            return self.orders_channel(id, false);
        }
        let channels = match self.resolve(&id, &names) {
            Ok(c) => c,
            Err(e) => return self.error(e),
        };
        let link = Arc::clone(&self.link);
        let mut st = link.lock();
        if let Some(missing) =
            channels.iter().find(|c| !st.subs.iter().any(|s| s.channel.id == c.id))
        {
            let message = format!("not subscribed to `{}`", missing.name);
            drop(st);
            return self.error(RequestError { id, code: ErrorCode::NotSubscribed, message });
        }
        let json = self.format == Format::Json;
        let mut left = Vec::with_capacity(channels.len());
        st.subs.retain(|s| {
            let leave = channels.iter().any(|c| c.id == s.channel.id);
            if leave {
                s.channel.unsubscribe(json);
                left.push(s.channel.index);
            }
            !leave
        });
        st.push(control::reply("unsubscribed", &id, serde_json::json!({ "channels": names })), 0);
        drop(st);
        for channel in left {
            self.ctx.writers.unsubscribe(link.id, channel);
        }
    }
}

/// The private channel of the connection's own execution reports.
pub const ORDERS_CHANNEL: &str = "orders";

/// `{"op":"execution", ...}`: one report of the `orders` channel. `seq` is the account's
/// report sequence on the engine shard `shard` (executions and transfers share it; each
/// shard keeps its own): contiguous per shard, so a client can tell it missed one.
fn execution_frame(report: &AccountReport, trading: &crate::trading::Trading) -> Bytes {
    let fields = match report {
        AccountReport::Exec(r) => exec_fields(r, trading),
        AccountReport::Transfer(t, shard) => transfer_fields(t, *shard, trading),
    };
    let mut object = serde_json::json!({ "op": "execution", "channel": ORDERS_CHANNEL });
    if let (Some(o), serde_json::Value::Object(extra)) = (object.as_object_mut(), fields) {
        o.extend(extra);
    }
    protocol::frame(Opcode::Text, object.to_string().as_bytes()).into()
}

/// A transfer as the `orders` channel shows it: `kind` `transferred`, the asset and the
/// signed amount instead of order fields.
fn transfer_fields(
    t: &TransferReport,
    shard: usize,
    trading: &crate::trading::Trading,
) -> serde_json::Value {
    use tickgate_engine::types::format_fixed;
    let asset = trading.engine.assets().get(usize::from(t.asset.0));
    serde_json::json!({
        "seq": t.seq.0,
        "shard": shard,
        "ts": t.ts.0,
        "kind": "transferred",
        "asset": asset.map(|a| a.symbol.as_str()),
        "amount": asset.map(|a| format_fixed(t.amount.0, a.precision)),
    })
}

/// An order's execution report as the `orders` channel shows it. A cancel or replace the
/// engine refused because the order was gone (filled or canceled first) comes with the
/// order's fields zeroed (the engine no longer has it): shown with the order as it ended
/// and the reason `order_closed`, as the request's answer says.
fn exec_fields(r: &ExecReport, trading: &crate::trading::Trading) -> serde_json::Value {
    use tickgate_engine::{ExecKind, RejectReason};
    let refused = matches!(r.kind, ExecKind::CancelRejected | ExecKind::ReplaceRejected);
    if refused && r.reason == Some(RejectReason::UnknownOrder) {
        if let Some(o) = trading.orders.order(r.account, r.order_id) {
            let mut fields = report_fields(&o.onto(*r), trading);
            fields["reason"] = "order_closed".into();
            return fields;
        }
    }
    report_fields(r, trading)
}

fn report_fields(r: &ExecReport, trading: &crate::trading::Trading) -> serde_json::Value {
    use tickgate_engine::types::format_fixed;
    let instrument = trading.instrument(r.instrument);
    let (symbol, pp, qp) = match instrument {
        Some(i) => (i.spec.symbol.as_str(), i.spec.price_precision, i.spec.qty_precision),
        None => ("", 0, 0),
    };
    let rejected = r.kind == tickgate_engine::ExecKind::Rejected;
    let price = match instrument {
        Some(i) => crate::views::order_price(r.price, r.order_type, rejected, i),
        None => Some(format_fixed(r.price.0, pp)),
    };
    serde_json::json!({
        "seq": r.seq.0,
        "shard": trading.engine.shard_of(r.instrument).unwrap_or(0),
        "ts": r.ts.0,
        "kind": r.kind.as_str(),
        "reason": tickgate_engine::RejectReason::name_of(r.reason),
        "order_id": r.order_id.0,
        "client_order_id": r.client_order_id,
        "symbol": symbol,
        "side": r.side.as_str(),
        "type": r.order_type.as_str(),
        "price": price,
        "last_price": format_fixed(r.last_price.0, pp),
        "last_qty": format_fixed(r.last_qty.0, qp),
        "open_qty": format_fixed(r.leaves_qty.0, qp),
        "filled_qty": format_fixed(r.cum_qty.0, qp),
    })
}

/// `order.cancel_all`: the `order.canceled_all` reply, or the error (an unknown symbol; or
/// the server's reason none could be queued, `CancelAllOutcome::refused_whole`).
async fn cancel_all(
    trading: &crate::trading::Trading,
    account: AccountId,
    id: Option<RequestId>,
    symbol: Option<&str>,
) -> Result<Bytes, RequestError> {
    let instrument = match symbol {
        None => None,
        Some(s) => match trading.engine.instrument_by_symbol(s) {
            Some(i) => Some(i.id),
            None => {
                let message = format!("no instrument `{s}`");
                return Err(RequestError { id, code: ErrorCode::UnknownSymbol, message });
            }
        },
    };
    let outcome = trading.cancel_all(account, instrument).await;
    if let Some(e) = outcome.refused_whole() {
        return Err(RequestError { id, code: e.code, message: e.message });
    }
    let fields = crate::views::cancel_all_json(&outcome, trading.engine.instruments());
    Ok(control::reply("order.canceled_all", &id, fields))
}

/// A connection's order requests still running, by arrival: what a cancel-all waits for.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    state: std::sync::Mutex<(u64, std::collections::BTreeSet<u64>)>,
    done: tokio::sync::Notify,
}

impl InFlight {
    /// Registers the next request; it is done when the ticket is dropped.
    pub(super) fn open(self: &Arc<Self>) -> Ticket {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = state.0;
        state.0 += 1;
        state.1.insert(n);
        Ticket { n, in_flight: Arc::clone(self) }
    }
}

/// One request of [`InFlight`], done when dropped (however its task ends).
pub(super) struct Ticket {
    n: u64,
    in_flight: Arc<InFlight>,
}

impl Ticket {
    /// Waits until every request that came before this one is done.
    async fn earlier_done(&self) {
        loop {
            let notified = self.in_flight.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.none_earlier() {
                return;
            }
            notified.await;
        }
    }

    fn none_earlier(&self) -> bool {
        let state = self.in_flight.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1.range(..self.n).next().is_none()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.in_flight.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1.remove(&self.n);
        drop(state);
        self.in_flight.done.notify_waiters();
    }
}
