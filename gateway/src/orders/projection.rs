//! The order and account projection: users' execution reports into the [`OrderStore`],
//! answers to waiting requests once their commands are complete, the history file
//! flushed every pass.

use std::sync::Arc;

use tickgate_engine::{Event, UnixNanos};

use super::{AnswerGate, OrderStore};
use crate::events::{Batch, EventConsumer};

/// Feeds the [`OrderStore`] from engine events (see [`crate::events`]).
#[derive(Debug)]
pub struct OrderProjection {
    orders: Arc<OrderStore>,
    /// Answers to order requests, sent once their commands' reports are all applied.
    answers: AnswerGate,
    /// Per shard: the timestamp of the last event applied, and of the last command
    /// known complete (all its events applied; see [`AnswerGate`] for how that is known).
    applied: Vec<Applied>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Applied {
    last: u64,
    complete: u64,
}

impl OrderProjection {
    /// A projection into `orders` of `shards` engine shards.
    pub fn new(orders: Arc<OrderStore>, shards: usize) -> Self {
        OrderProjection {
            orders,
            answers: AnswerGate::new(shards),
            applied: vec![Applied::default(); shards],
        }
    }
}

impl EventConsumer for OrderProjection {
    fn on_events(&mut self, batch: &Batch<'_>) {
        let shard = batch.shard;
        let mut applied = self.applied.get(shard).copied().unwrap_or_default();
        for e in batch.events {
            self.answers.event(shard, e.ts(), &self.orders);
            if e.ts().0 != applied.last {
                applied.complete = applied.last;
                applied.last = e.ts().0;
            }
            match e {
                Event::Exec(report) => {
                    if let Some(answer) = self.orders.apply(report) {
                        self.answers.hold(shard, answer, &self.orders);
                    }
                }
                Event::Transfer(t) => self.orders.apply_transfer(t, shard),
                _ => {}
            }
        }
        if batch.caught_up {
            self.answers.caught_up(shard, &self.orders);
            applied.complete = applied.last;
        }
        if let Some(a) = self.applied.get_mut(shard) {
            *a = applied;
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
        for (shard, a) in self.applied.iter().enumerate() {
            self.orders.mark_stored(shard, UnixNanos(a.complete));
            self.orders.mark_applied(shard, UnixNanos(a.complete));
        }
    }
}
