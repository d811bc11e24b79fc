//! The alert evaluator: trades and BBO changes move each instrument's last price (which
//! fires price alerts), users' fills become `fill` alerts.

use std::sync::Arc;

use serde_json::json;
use tickgate_engine::types::format_fixed;
use tickgate_engine::{Event, ExecKind, ExecReport, Instrument};

use super::{AlertHub, Fired};
use crate::events::{Batch, EventConsumer};

/// Feeds the [`AlertHub`] from engine events (see [`crate::events`]).
#[derive(Debug)]
pub struct AlertEvaluator {
    hub: Arc<AlertHub>,
    instruments: Vec<Instrument>,
    /// The engine's shard count (a fill's id and shard depend on it).
    shards: usize,
    fired: Vec<Fired>,
}

impl AlertEvaluator {
    /// Evaluates `hub`'s alerts over these instruments (indexed by id) of an engine of
    /// `shards` shards.
    pub fn new(hub: Arc<AlertHub>, instruments: &[Instrument], shards: usize) -> Self {
        let shards = shards.max(1);
        AlertEvaluator { hub, instruments: instruments.to_vec(), shards, fired: Vec::new() }
    }

    fn on_fill(&self, r: &ExecReport) {
        let Some(i) = self.instruments.get(r.instrument.0 as usize) else { return };
        let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
        let data = json!({
            "order_id": r.order_id.0,
            "client_order_id": r.client_order_id,
            "symbol": i.spec.symbol,
            "side": r.side.as_str(),
            "price": format_fixed(r.last_price.0, pp),
            "qty": format_fixed(r.last_qty.0, qp),
            "open_qty": format_fixed(r.leaves_qty.0, qp),
            "status": r.kind.as_str(),
            // As in GET /api/v1/fills, and the shard the report's sequence counts on.
            "fill_id": crate::orders::fill_id(r, self.shards),
            "shard": r.instrument.shard(self.shards),
            "report_seq": r.seq.0,
            "ts": r.ts.0,
        });
        self.hub.publish(r.account, "fill", &data);
    }
}

impl EventConsumer for AlertEvaluator {
    fn on_events(&mut self, batch: &Batch<'_>) {
        for event in batch.events {
            match event {
                Event::Trade(t) => {
                    if let Some(i) = self.instruments.get(t.instrument.0 as usize) {
                        self.hub.on_price(i, t.price.0, t.ts.0, &mut self.fired);
                    }
                }
                Event::Bbo(b) if b.bid_qty.0 > 0 && b.ask_qty.0 > 0 => {
                    if let Some(i) = self.instruments.get(b.instrument.0 as usize) {
                        let mid = (b.bid_price.0 + b.ask_price.0) / 2;
                        self.hub.on_price(i, mid, b.ts.0, &mut self.fired);
                    }
                }
                Event::Exec(r)
                    if matches!(r.kind, ExecKind::PartiallyFilled | ExecKind::Filled)
                        && self.hub.users.contains_key(&r.account) =>
                {
                    self.on_fill(r);
                }
                _ => {}
            }
        }
    }

    fn on_missed(&mut self, _shard: usize, missed: u64) {
        // Fills (and prices) were lost to the evaluator: never a silent gap.
        for account in self.hub.users.keys() {
            self.hub.publish(
                *account,
                "reset",
                &json!({"reason": "alerts_lagged", "missed_events": missed}),
            );
        }
    }
}
