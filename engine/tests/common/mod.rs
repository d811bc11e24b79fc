#![allow(dead_code, unreachable_pub, missing_docs)]
//! A small harness: one engine owning every instrument of a two-asset market.

use tickgate_engine::*;

pub const USD: AssetId = AssetId(0);
pub const BTC: AssetId = AssetId(1);
pub const MKT: InstrumentId = InstrumentId(0);

/// BTC-USD with price precision 0 (whole dollars), quantity precision 0 (whole coins),
/// USD and BTC at precision 0, so amounts are easy to read: notional = price * qty.
pub fn spec() -> EngineSpec {
    EngineSpec {
        assets: vec![
            Asset { symbol: "USD".into(), precision: 0 },
            Asset { symbol: "BTC".into(), precision: 0 },
        ],
        instruments: vec![InstrumentSpec {
            symbol: "BTC-USD".into(),
            base: BTC,
            quote: USD,
            price_precision: 0,
            qty_precision: 0,
            tick_size: Price(1),
            lot_size: Qty(1),
            price_min: Price(1),
            price_max: Price(1_000),
            qty_max: Qty(1_000),
            reference_price: Price(100),
        }],
        accounts_max: 8,
        orders_per_book_max: 64,
    }
}

pub struct Harness {
    pub engine: Engine,
    pub events: Vec<Event>,
    next_id: u64,
    ts: u64,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_spec(spec())
    }

    pub fn with_spec(spec: EngineSpec) -> Self {
        let engine = Engine::new(&spec, |_| true).expect("valid spec");
        Harness { engine, events: Vec::new(), next_id: 1, ts: 0 }
    }

    pub fn run(&mut self, kind: CommandKind) -> Vec<Event> {
        self.ts += 1;
        let mut out = Vec::new();
        self.engine.process(&Command { ts: UnixNanos(self.ts), kind }, &mut out);
        self.events.extend_from_slice(&out);
        self.engine.check_invariants();
        out
    }

    pub fn fund(&mut self, account: u32, usd: i64, btc: i64) {
        for (asset, amount) in [(USD, usd), (BTC, btc)] {
            if amount != 0 {
                let out = self.run(CommandKind::Transfer(Transfer {
                    account: AccountId(account),
                    asset,
                    amount: Amount(amount),
                    request_id: 0,
                }));
                assert!(matches!(out[0], Event::Transfer(_)));
            }
        }
    }

    pub fn order(
        &mut self,
        account: u32,
        side: Side,
        order_type: OrderType,
        price: i64,
        qty: i64,
    ) -> (OrderId, Vec<Event>) {
        self.order_stp(account, side, order_type, price, qty, StpMode::CancelResting)
    }

    pub fn order_stp(
        &mut self,
        account: u32,
        side: Side,
        order_type: OrderType,
        price: i64,
        qty: i64,
        stp: StpMode,
    ) -> (OrderId, Vec<Event>) {
        let id = OrderId(self.next_id);
        self.next_id += 1;
        let out = self.run(CommandKind::New(NewOrder {
            key: None,
            order_id: id,
            client_order_id: id.0 * 10,
            account: AccountId(account),
            instrument: MKT,
            side,
            order_type,
            price: Price(price),
            qty: Qty(qty),
            stp,
        }));
        (id, out)
    }

    pub fn cancel(&mut self, account: u32, id: OrderId) -> Vec<Event> {
        self.run(CommandKind::Cancel(CancelOrder {
            order_id: id,
            account: AccountId(account),
            instrument: MKT,
        }))
    }

    pub fn replace(&mut self, account: u32, id: OrderId, price: i64, qty: i64) -> Vec<Event> {
        self.replace_as(account, id, price, ReplaceQty::Open(Qty(qty)))
    }

    /// A replace whose quantity is the order's total ([`ReplaceQty::Total`]).
    pub fn replace_total(
        &mut self,
        account: u32,
        id: OrderId,
        price: i64,
        total: i64,
    ) -> Vec<Event> {
        self.replace_as(account, id, price, ReplaceQty::Total(Qty(total)))
    }

    fn replace_as(&mut self, account: u32, id: OrderId, price: i64, qty: ReplaceQty) -> Vec<Event> {
        let (order_id, account, instrument, price) = (id, AccountId(account), MKT, Price(price));
        self.run(CommandKind::Replace(ReplaceOrder { order_id, account, instrument, price, qty }))
    }

    pub fn balance(&self, account: u32, asset: AssetId) -> Balance {
        self.engine.ledger().balance(AccountId(account), asset)
    }

    pub fn book(&self) -> BookSnapshot {
        self.engine.book_snapshot(MKT, usize::MAX).expect("owned")
    }
}

pub fn reports(events: &[Event]) -> Vec<ExecReport> {
    events.iter().filter_map(|e| if let Event::Exec(r) = e { Some(*r) } else { None }).collect()
}

pub fn kinds(events: &[Event]) -> Vec<(ExecKind, Option<RejectReason>)> {
    reports(events).iter().map(|r| (r.kind, r.reason)).collect()
}

pub fn trades(events: &[Event]) -> Vec<Trade> {
    events.iter().filter_map(|e| if let Event::Trade(t) = e { Some(*t) } else { None }).collect()
}

pub fn rejection(events: &[Event]) -> Option<RejectReason> {
    reports(events).iter().find(|r| r.kind.is_rejection()).and_then(|r| r.reason)
}

/// Runs `ask` (a submit or a query), retrying while the engine's queue is full (for up to
/// 30 s); panics on any other error. A query right after a burst of commands can find the
/// queue still full: that is back-pressure, not a failure.
pub fn retrying<T>(mut ask: impl FnMut() -> Result<T, tickgate_engine::runtime::SubmitError>) -> T {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ask() {
            Ok(answer) => return answer,
            Err(tickgate_engine::runtime::SubmitError::QueueFull) if Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("engine call failed: {e}"),
        }
    }
}

/// Submits, retrying while the queue is full (for up to 30 s); panics on any other error.
pub fn submit_retrying(handle: &tickgate_engine::runtime::EngineHandle, kind: CommandKind) {
    retrying(|| handle.submit(kind))
}
