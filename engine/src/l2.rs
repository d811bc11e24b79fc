//! An aggregated (L2) book rebuilt from a snapshot plus later deltas: what a client, a
//! gateway or a test keeps to follow a book without seeing its orders.

use std::collections::BTreeMap;

use crate::book::BookSnapshot;
use crate::event::BookDelta;
use crate::types::{Price, Qty, Seq, Side};

/// A price level: `(price, aggregate quantity)`.
pub type Level = (Price, Qty);

/// A delta arrived out of sequence: the replica must be resynchronised from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("book sequence gap: expected {expected}, got {got}")]
pub struct SeqGap {
    /// The sequence that should have come next.
    pub expected: Seq,
    /// The sequence that came.
    pub got: Seq,
}

/// Price levels per side, valid at `seq`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L2Book {
    seq: Seq,
    bids: BTreeMap<Price, Qty>,
    asks: BTreeMap<Price, Qty>,
}

impl L2Book {
    /// Starts from a snapshot.
    pub fn from_snapshot(snapshot: &BookSnapshot) -> Self {
        L2Book {
            seq: snapshot.seq,
            bids: snapshot.bids.iter().copied().collect(),
            asks: snapshot.asks.iter().copied().collect(),
        }
    }

    /// Sequence of the last delta applied (or of the snapshot).
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Applies a delta. Deltas at or below the current sequence are already included and
    /// ignored (`Ok(false)`); the next one is applied (`Ok(true)`); a jump is an error and
    /// leaves the book unchanged.
    pub fn apply(&mut self, delta: &BookDelta) -> Result<bool, SeqGap> {
        if delta.seq <= self.seq {
            return Ok(false);
        }
        if delta.seq != self.seq.next() {
            return Err(SeqGap { expected: self.seq.next(), got: delta.seq });
        }
        let side = match delta.side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        if delta.qty.0 == 0 {
            side.remove(&delta.price);
        } else {
            side.insert(delta.price, delta.qty);
        }
        self.seq = delta.seq;
        Ok(true)
    }

    /// Best bid and best ask.
    pub fn best(&self) -> (Option<Level>, Option<Level>) {
        let bid = self.bids.iter().next_back().map(|(p, q)| (*p, *q));
        let ask = self.asks.iter().next().map(|(p, q)| (*p, *q));
        (bid, ask)
    }

    /// The top `depth` levels per side, best first, as a snapshot at the current sequence.
    pub fn snapshot(&self, depth: usize) -> BookSnapshot {
        BookSnapshot {
            seq: self.seq,
            bids: self.bids.iter().rev().take(depth).map(|(p, q)| (*p, *q)).collect(),
            asks: self.asks.iter().take(depth).map(|(p, q)| (*p, *q)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{InstrumentId, UnixNanos};

    fn delta(seq: u64, side: Side, price: i64, qty: i64) -> BookDelta {
        BookDelta {
            instrument: InstrumentId(0),
            seq: Seq(seq),
            ts: UnixNanos(0),
            side,
            price: Price(price),
            qty: Qty(qty),
        }
    }

    #[test]
    fn applies_in_order_and_detects_gaps() {
        let snap = BookSnapshot { seq: Seq(5), bids: vec![(Price(10), Qty(1))], asks: vec![] };
        let mut book = L2Book::from_snapshot(&snap);
        assert_eq!(book.apply(&delta(4, Side::Buy, 9, 9)), Ok(false), "old delta ignored");
        assert_eq!(book.apply(&delta(6, Side::Sell, 12, 3)), Ok(true));
        assert_eq!(book.apply(&delta(7, Side::Buy, 10, 0)), Ok(true));
        assert_eq!(
            book.apply(&delta(9, Side::Buy, 8, 1)),
            Err(SeqGap { expected: Seq(8), got: Seq(9) })
        );
        assert_eq!(book.best(), (None, Some((Price(12), Qty(3)))));
        assert_eq!(book.seq(), Seq(7));
    }
}
