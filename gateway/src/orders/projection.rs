//! The order and account projection: users' execution reports into the [`OrderStore`],
//! answers to waiting requests once their commands are complete, the history file
//! flushed every pass.

use std::sync::Arc;

use tickgate_engine::Event;

use super::{AnswerGate, OrderStore};
use crate::events::{Batch, EventConsumer};

/// Feeds the [`OrderStore`] from engine events (see [`crate::events`]).
#[derive(Debug)]
pub struct OrderProjection {
    orders: Arc<OrderStore>,
    /// Answers to order requests, sent once their commands' reports are all applied.
    answers: AnswerGate,
    /// Per shard, the source position up to which reports were applied.
    positions: Vec<u64>,
}

impl OrderProjection {
    /// A projection into `orders` of `shards` engine shards.
    pub fn new(orders: Arc<OrderStore>, shards: usize) -> Self {
        OrderProjection { orders, answers: AnswerGate::new(shards), positions: vec![0; shards] }
    }
}

impl EventConsumer for OrderProjection {
    fn on_events(&mut self, batch: &Batch<'_>) {
        let shard = batch.shard;
        for e in batch.events {
            self.answers.event(shard, e.ts());
            if let Event::Exec(report) = e {
                if let Some(answer) = self.orders.apply(report) {
                    self.answers.hold(shard, answer);
                }
            }
        }
        if batch.caught_up {
            self.answers.caught_up(shard);
        }
        if let Some(p) = self.positions.get_mut(shard) {
            *p = batch.position;
        }
    }

    fn on_missed(&mut self, shard: usize, missed: u64) {
        // Reports were lost to the store: orders and fills listed may be stale until
        // their next report. Never silent.
        tracing::error!(shard, missed, "order projection lapped by the engine's event ring");
    }

    fn on_pass(&mut self) {
        // Users' reports of this pass reach the history file before anyone can have
        // acted on them over the network (a killed process then loses none).
        self.orders.flush_history();
        self.answers.release();
        self.orders.mark_stored(self.positions.iter().copied().enumerate());
    }
}
