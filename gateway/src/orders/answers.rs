//! Answers to order requests: which report answers which request, and the gate that
//! holds an answer back until every report of its command is applied.

use tickgate_engine::{ExecKind, ExecReport};
use tokio::sync::oneshot;

use super::{OrderStore, OrderView};

/// Which reports answer a waiting request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    /// A new order: accepted or rejected.
    New,
    /// A cancel: canceled or rejected.
    Cancel,
    /// A replace: replaced or rejected.
    Replace,
}

impl Awaiting {
    pub(super) fn answered_by(self, kind: ExecKind) -> bool {
        matches!(
            (self, kind),
            (Awaiting::New, ExecKind::Accepted | ExecKind::Rejected)
                | (Awaiting::Cancel, ExecKind::Canceled | ExecKind::CancelRejected)
                | (Awaiting::Replace, ExecKind::Replaced | ExecKind::ReplaceRejected)
        )
    }
}

/// What a waiting request gets: the report that answered it, and its order as the whole
/// command left it (read when the command's last report was applied, before any later
/// command's: a post-only answered `filled` by a later taker's fill would mislead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The report that answered the request.
    pub report: ExecReport,
    /// The order right after its command (`None`: not recorded, e.g. a refused retry).
    pub order: Option<OrderView>,
}

/// The engine's verdict on a waiting request, held back until every report of the command
/// that gave it has been applied (see [`super::OrderStore::apply`]): a market order is answered
/// filled, not accepted-and-open.
#[derive(Debug)]
pub struct Answer {
    pub(super) tx: oneshot::Sender<Verdict>,
    pub(super) report: ExecReport,
    pub(super) order: Option<OrderView>,
}

impl Answer {
    /// Hands the verdict to the request (which may have given up: that is fine).
    pub fn send(self) {
        let _ = self.tx.send(Verdict { report: self.report, order: self.order });
    }

    /// Reads the order as it stands now: call when its command is complete.
    fn settle(&mut self, orders: &OrderStore) {
        self.order = orders.order(self.report.account, self.report.order_id);
    }
}

/// Holds answers back until the command that gave them can have no more reports to come,
/// then lets them go together after the pass's reports are in the history file.
///
/// The engine writes all events of one command in one go, stamped with that command's
/// timestamp (strictly increasing per shard: no two commands of a shard share one, even
/// after a wall-clock step back), and moves its ring's head only between commands. So,
/// per shard, a command is complete once an event with another timestamp follows it, or
/// once a read reached the head.
#[derive(Debug, Default)]
pub struct AnswerGate {
    /// Per shard: the timestamp of the last event seen, and the answers it may still add to.
    pending: Vec<(u64, Vec<Answer>)>,
    ready: Vec<Answer>,
}

impl AnswerGate {
    /// A gate for `shards` engine shards.
    pub fn new(shards: usize) -> Self {
        AnswerGate { pending: (0..shards).map(|_| (0, Vec::new())).collect(), ready: Vec::new() }
    }

    /// Called for every event of `shard`, in ring order, before it is applied to `orders`.
    pub fn event(&mut self, shard: usize, ts: tickgate_engine::UnixNanos, orders: &OrderStore) {
        let Some((last, held)) = self.pending.get_mut(shard) else { return };
        if *last != ts.0 {
            // The command before is complete and nothing of this one is applied yet.
            for mut answer in held.drain(..) {
                answer.settle(orders);
                self.ready.push(answer);
            }
            *last = ts.0;
        }
    }

    /// Holds `answer`, given by `shard`'s current command.
    pub fn hold(&mut self, shard: usize, mut answer: Answer, orders: &OrderStore) {
        match self.pending.get_mut(shard) {
            Some((_, held)) => held.push(answer),
            None => {
                answer.settle(orders);
                self.ready.push(answer)
            }
        }
    }

    /// A read of `shard` reached its ring's head: every command read so far is complete
    /// (and applied to `orders`).
    pub fn caught_up(&mut self, shard: usize, orders: &OrderStore) {
        if let Some((_, held)) = self.pending.get_mut(shard) {
            for mut answer in held.drain(..) {
                answer.settle(orders);
                self.ready.push(answer);
            }
        }
    }

    /// Sends every answer whose command is complete.
    pub fn release(&mut self) {
        for answer in self.ready.drain(..) {
            answer.send();
        }
    }
}

/// A request waiting for the engine's answer about one order.
pub(super) struct Waiter {
    pub(super) token: u64,
    pub(super) awaiting: Awaiting,
    pub(super) tx: oneshot::Sender<Verdict>,
}

/// A registered wait: the answer, and the token that [`super::OrderStore::forget`] takes.
#[derive(Debug)]
pub struct Wait {
    /// Resolves with the engine's answer.
    pub answer: oneshot::Receiver<Verdict>,
    /// Identifies this wait.
    pub token: u64,
}
