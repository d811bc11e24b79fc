//! One instrument's limit order book: the data structure, not the policy (matching lives
//! in `engine/matching.rs`).
//!
//! Layout, chosen for the add/cancel-heavy flow of a real market:
//! - Orders live in an arena (`Vec` + free list) and are linked into a FIFO per price level
//!   by `u32` indices: no allocation per order in steady state, and removing any order is
//!   O(1) once its slot is known.
//! - An order-id map (`FxHashMap<OrderId, slot>`) makes cancel and replace O(1).
//! - Levels live in their own arena; each side keeps a *sorted ladder* of `(key, level)`
//!   with the best price at the **end** (`key = price` for bids, `-price` for asks). Best
//!   price is `last()`: O(1). New levels almost always appear near the top, where inserting
//!   into a `Vec` moves only a few entries. Versus a `BTreeMap<Price, VecDeque>` this keeps
//!   the hot part of both sides in a couple of cache lines; versus a tick-indexed array it
//!   costs no memory proportional to the price band (BTC at 0.01 ticks would need millions
//!   of slots per side) and needs no re-centring. `benches/benches/engine.rs` measures it.

use rustc_hash::FxHashMap;

use crate::command::{OrderType, StpMode};
use crate::types::{AccountId, OrderId, Price, Qty, Seq, Side};

const NIL: u32 = u32::MAX;

/// An order resting in the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestingOrder {
    /// Id.
    pub id: OrderId,
    /// The client's id.
    pub client_order_id: u64,
    /// Owner.
    pub account: AccountId,
    /// Limit price.
    pub price: Price,
    /// Open quantity.
    pub leaves: Qty,
    /// Filled so far.
    pub filled: Qty,
    /// Side.
    pub side: Side,
    /// `Limit` or `PostOnly`.
    pub order_type: OrderType,
    /// Self-trade prevention it was placed with (kept for replaces that re-match).
    pub stp: StpMode,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    order: RestingOrder,
    prev: u32,
    next: u32,
    level: u32,
}

#[derive(Clone, Copy, Debug)]
struct Level {
    price: Price,
    total: Qty,
    head: u32,
    tail: u32,
    count: u32,
}

/// The book could not take another resting order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("order book is at its capacity of resting orders")]
pub struct BookFull;

/// A point-in-time view of a book's aggregated levels, best first, valid at `seq` (the
/// book channel sequence of the last delta it includes).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BookSnapshot {
    /// Book channel sequence this snapshot is valid at.
    pub seq: Seq,
    /// Bid levels, highest price first.
    pub bids: Vec<(Price, Qty)>,
    /// Ask levels, lowest price first.
    pub asks: Vec<(Price, Qty)>,
}

/// A limit order book for one instrument. Single writer: whoever owns it mutates it.
#[derive(Debug)]
pub struct OrderBook {
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    levels: Vec<Level>,
    free_levels: Vec<u32>,
    /// Sorted by key ascending, best at the end.
    bids: Vec<(i64, u32)>,
    asks: Vec<(i64, u32)>,
    index: FxHashMap<OrderId, u32>,
    orders_max: usize,
}

#[inline]
fn key(side: Side, price: Price) -> i64 {
    match side {
        Side::Buy => price.0,
        Side::Sell => -price.0,
    }
}

impl OrderBook {
    /// An empty book that holds at most `orders_max` resting orders. Arenas start small and
    /// grow (amortised) towards the cap: a table sized for the cap from the start would
    /// spread a few thousand live orders over megabytes and make every id lookup a cache
    /// miss (measured: ~2x slower on the mixed-flow bench).
    pub fn new(orders_max: usize) -> Self {
        assert!(orders_max < NIL as usize, "slot indices are u32");
        let reserve = orders_max.min(1 << 10);
        OrderBook {
            nodes: Vec::with_capacity(reserve),
            free_nodes: Vec::new(),
            levels: Vec::with_capacity(1024),
            free_levels: Vec::new(),
            bids: Vec::with_capacity(1024),
            asks: Vec::with_capacity(1024),
            index: FxHashMap::with_capacity_and_hasher(reserve, Default::default()),
            orders_max,
        }
    }

    fn ladder(&self, side: Side) -> &Vec<(i64, u32)> {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    fn ladder_mut(&mut self, side: Side) -> &mut Vec<(i64, u32)> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    /// Number of resting orders.
    pub fn order_count(&self) -> usize {
        self.index.len()
    }

    /// Whether one more order can rest.
    pub fn has_capacity(&self) -> bool {
        self.index.len() < self.orders_max
    }

    /// Number of price levels on `side`.
    pub fn level_count(&self, side: Side) -> usize {
        self.ladder(side).len()
    }

    /// Best price and its aggregate quantity on `side`.
    #[inline]
    pub fn best(&self, side: Side) -> Option<(Price, Qty)> {
        self.ladder(side).last().map(|&(_, l)| {
            let level = &self.levels[l as usize];
            (level.price, level.total)
        })
    }

    /// Slot of the oldest order at the best price of `side`.
    #[inline]
    pub fn front(&self, side: Side) -> Option<u32> {
        self.ladder(side).last().map(|&(_, l)| self.levels[l as usize].head)
    }

    /// The order in `slot`. Slots come from [`OrderBook::front`] or [`OrderBook::find`].
    #[inline]
    pub fn order(&self, slot: u32) -> &RestingOrder {
        &self.nodes[slot as usize].order
    }

    /// Slot of a resting order.
    #[inline]
    pub fn find(&self, id: OrderId) -> Option<u32> {
        self.index.get(&id).copied()
    }

    /// Whether `id` is resting.
    pub fn contains(&self, id: OrderId) -> bool {
        self.index.contains_key(&id)
    }

    /// Aggregate quantity at `price` on `side` (zero if no level).
    pub fn level_qty(&self, side: Side, price: Price) -> Qty {
        let ladder = self.ladder(side);
        let k = key(side, price);
        let at = ladder.partition_point(|&(x, _)| x < k);
        match ladder.get(at) {
            Some(&(x, l)) if x == k => self.levels[l as usize].total,
            _ => Qty::ZERO,
        }
    }

    /// Rests `order` at the back of its level's queue. Returns the slot and the level's new
    /// aggregate quantity.
    pub fn insert(&mut self, order: RestingOrder) -> Result<(u32, Qty), BookFull> {
        debug_assert!(order.leaves.0 > 0, "resting orders have open quantity");
        debug_assert!(!self.index.contains_key(&order.id), "order ids are unique");
        if !self.has_capacity() {
            return Err(BookFull);
        }
        let level = self.level_for(order.side, order.price);
        let node = Node { order, prev: self.levels[level as usize].tail, next: NIL, level };
        let slot = match self.free_nodes.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let lvl = &mut self.levels[level as usize];
        if lvl.tail == NIL {
            lvl.head = slot;
        } else {
            self.nodes[lvl.tail as usize].next = slot;
        }
        lvl.tail = slot;
        lvl.count += 1;
        lvl.total.0 += order.leaves.0;
        let total = lvl.total;
        self.index.insert(order.id, slot);
        Ok((slot, total))
    }

    /// Finds or creates the level for `price` on `side`.
    fn level_for(&mut self, side: Side, price: Price) -> u32 {
        let k = key(side, price);
        let ladder = self.ladder(side);
        // New orders cluster at the top, which is the end of the ladder: probe there first.
        let at = match ladder.last() {
            Some(&(x, l)) if x == k => return l,
            Some(&(x, _)) if x < k => ladder.len(),
            _ => ladder.partition_point(|&(x, _)| x < k),
        };
        if let Some(&(x, l)) = ladder.get(at) {
            if x == k {
                return l;
            }
        }
        let level = Level { price, total: Qty::ZERO, head: NIL, tail: NIL, count: 0 };
        let l = match self.free_levels.pop() {
            Some(l) => {
                self.levels[l as usize] = level;
                l
            }
            None => {
                self.levels.push(level);
                (self.levels.len() - 1) as u32
            }
        };
        self.ladder_mut(side).insert(at, (k, l));
        l
    }

    /// Fills `qty` of the order in `slot`; removes it when nothing is left. Returns the
    /// order after the fill and the level's new aggregate quantity.
    pub fn fill(&mut self, slot: u32, qty: Qty) -> (RestingOrder, Qty) {
        let node = &mut self.nodes[slot as usize];
        debug_assert!(qty.0 > 0 && qty.0 <= node.order.leaves.0, "fill within open qty");
        node.order.leaves.0 -= qty.0;
        node.order.filled.0 += qty.0;
        let order = node.order;
        let lvl = &mut self.levels[node.level as usize];
        lvl.total.0 -= qty.0;
        if order.leaves.0 == 0 {
            // `remove` subtracts the (now zero) open quantity and drops an emptied level.
            let (_, total) = self.remove(slot);
            (order, total)
        } else {
            (order, lvl.total)
        }
    }

    /// Lowers the open quantity of the order in `slot` in place, keeping its time priority.
    /// Returns the level's new aggregate quantity.
    pub fn reduce(&mut self, slot: u32, leaves: Qty) -> Qty {
        let node = &mut self.nodes[slot as usize];
        debug_assert!(leaves.0 > 0 && leaves.0 < node.order.leaves.0, "reduce keeps some");
        let delta = node.order.leaves.0 - leaves.0;
        node.order.leaves = leaves;
        let lvl = &mut self.levels[node.level as usize];
        lvl.total.0 -= delta;
        lvl.total
    }

    /// Unlinks the order in `slot`. Returns it and its level's new aggregate quantity
    /// (zero when the level is gone).
    pub fn remove(&mut self, slot: u32) -> (RestingOrder, Qty) {
        let Node { order, prev, next, level } = self.nodes[slot as usize];
        if prev == NIL {
            self.levels[level as usize].head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.levels[level as usize].tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.index.remove(&order.id);
        self.free_nodes.push(slot);
        let lvl = &mut self.levels[level as usize];
        lvl.count -= 1;
        lvl.total.0 -= order.leaves.0;
        let total = lvl.total;
        if lvl.count == 0 {
            debug_assert_eq!(total.0, 0, "an empty level has no quantity");
            self.drop_level(order.side, order.price, level);
        }
        (order, total)
    }

    fn drop_level(&mut self, side: Side, price: Price, level: u32) {
        let k = key(side, price);
        let ladder = self.ladder_mut(side);
        // Levels empty mostly at the top (fills, cancels of fresh quotes): check the end first.
        let at = if ladder.last().map(|e| e.0) == Some(k) {
            ladder.len() - 1
        } else {
            ladder.partition_point(|&(x, _)| x < k)
        };
        debug_assert_eq!(ladder.get(at).map(|e| e.1), Some(level), "level is in its ladder");
        ladder.remove(at);
        self.free_levels.push(level);
    }

    /// Levels of `side`, best first, as `(price, aggregate qty)`.
    pub fn levels(&self, side: Side) -> impl Iterator<Item = (Price, Qty)> + '_ {
        self.ladder(side).iter().rev().map(|&(_, l)| {
            let level = &self.levels[l as usize];
            (level.price, level.total)
        })
    }

    /// Orders of `side` in matching order: best price first, oldest first within a price.
    pub fn orders(&self, side: Side) -> impl Iterator<Item = &RestingOrder> + '_ {
        self.ladder(side).iter().rev().flat_map(move |&(_, l)| {
            let mut slot = self.levels[l as usize].head;
            std::iter::from_fn(move || {
                if slot == NIL {
                    return None;
                }
                let node = &self.nodes[slot as usize];
                slot = node.next;
                Some(&node.order)
            })
        })
    }

    /// Aggregated view of the top `depth` levels per side (`usize::MAX` for all).
    pub fn snapshot(&self, depth: usize, seq: Seq) -> BookSnapshot {
        BookSnapshot {
            seq,
            bids: self.levels(Side::Buy).take(depth).collect(),
            asks: self.levels(Side::Sell).take(depth).collect(),
        }
    }

    /// Checks every structural invariant; for tests. Panics with a description on failure.
    pub fn check_invariants(&self) {
        for side in [Side::Buy, Side::Sell] {
            let ladder = self.ladder(side);
            for pair in ladder.windows(2) {
                assert!(pair[0].0 < pair[1].0, "ladder strictly sorted");
            }
            for &(k, l) in ladder {
                let level = &self.levels[l as usize];
                assert_eq!(key(side, level.price), k, "ladder key matches level price");
                let (mut slot, mut prev, mut sum, mut count) = (level.head, NIL, 0i64, 0u32);
                while slot != NIL {
                    let node = &self.nodes[slot as usize];
                    assert_eq!(node.prev, prev, "back link");
                    assert_eq!(node.level, l, "node points at its level");
                    assert_eq!(node.order.price, level.price, "order at its level's price");
                    assert_eq!(node.order.side, side, "order on its side");
                    assert!(node.order.leaves.0 > 0, "resting orders have open qty");
                    assert_eq!(self.index.get(&node.order.id), Some(&slot), "index agrees");
                    sum += node.order.leaves.0;
                    count += 1;
                    prev = slot;
                    slot = node.next;
                }
                assert_eq!(level.tail, prev, "tail is the last node");
                assert_eq!(level.total.0, sum, "level total is the sum of its orders");
                assert_eq!(level.count, count, "level count");
                assert!(count > 0, "no empty levels in the ladder");
            }
        }
        let listed: usize = [Side::Buy, Side::Sell].iter().map(|&s| self.orders(s).count()).sum();
        assert_eq!(listed, self.index.len(), "every indexed order is linked");
        if let (Some((bid, _)), Some((ask, _))) = (self.best(Side::Buy), self.best(Side::Sell)) {
            assert!(bid < ask, "book is not crossed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64, side: Side, price: i64, qty: i64) -> RestingOrder {
        RestingOrder {
            id: OrderId(id),
            client_order_id: 0,
            account: AccountId(0),
            price: Price(price),
            leaves: Qty(qty),
            filled: Qty::ZERO,
            side,
            order_type: OrderType::Limit,
            stp: StpMode::CancelResting,
        }
    }

    #[test]
    fn best_prices_and_fifo() {
        let mut book = OrderBook::new(100);
        book.insert(order(1, Side::Buy, 100, 5)).unwrap();
        book.insert(order(2, Side::Buy, 101, 3)).unwrap();
        book.insert(order(3, Side::Buy, 101, 4)).unwrap();
        book.insert(order(4, Side::Sell, 105, 1)).unwrap();
        book.insert(order(5, Side::Sell, 103, 2)).unwrap();
        assert_eq!(book.best(Side::Buy), Some((Price(101), Qty(7))));
        assert_eq!(book.best(Side::Sell), Some((Price(103), Qty(2))));
        let front = book.front(Side::Buy).unwrap();
        assert_eq!(book.order(front).id, OrderId(2), "oldest first at a level");
        let ids: Vec<u64> = book.orders(Side::Buy).map(|o| o.id.0).collect();
        assert_eq!(ids, vec![2, 3, 1]);
        book.check_invariants();
    }

    #[test]
    fn fill_remove_and_reduce_update_levels() {
        let mut book = OrderBook::new(100);
        let (a, _) = book.insert(order(1, Side::Sell, 10, 5)).unwrap();
        let (b, total) = book.insert(order(2, Side::Sell, 10, 5)).unwrap();
        assert_eq!(total, Qty(10));
        let (after, total) = book.fill(a, Qty(2));
        assert_eq!((after.leaves, after.filled, total), (Qty(3), Qty(2), Qty(8)));
        assert_eq!(book.reduce(b, Qty(1)), Qty(4));
        let (_, total) = book.fill(a, Qty(3));
        assert_eq!(total, Qty(1));
        assert!(!book.contains(OrderId(1)));
        let (_, total) = book.remove(b);
        assert_eq!(total, Qty(0));
        assert_eq!(book.best(Side::Sell), None);
        assert_eq!(book.level_count(Side::Sell), 0);
        book.check_invariants();
    }

    #[test]
    fn slots_are_reused_and_capacity_enforced() {
        let mut book = OrderBook::new(2);
        let (s1, _) = book.insert(order(1, Side::Buy, 1, 1)).unwrap();
        book.insert(order(2, Side::Buy, 2, 1)).unwrap();
        assert_eq!(book.insert(order(3, Side::Buy, 3, 1)), Err(BookFull));
        book.remove(s1);
        let (s3, _) = book.insert(order(3, Side::Buy, 3, 1)).unwrap();
        assert_eq!(s3, s1, "freed slot reused");
        book.check_invariants();
    }

    #[test]
    fn middle_levels_insert_and_remove() {
        let mut book = OrderBook::new(100);
        for (id, p) in [(1, 100), (2, 90), (3, 95), (4, 80), (5, 99)] {
            book.insert(order(id, Side::Buy, p, 1)).unwrap();
        }
        let prices: Vec<i64> = book.levels(Side::Buy).map(|(p, _)| p.0).collect();
        assert_eq!(prices, vec![100, 99, 95, 90, 80]);
        let slot = book.find(OrderId(3)).unwrap();
        book.remove(slot);
        let prices: Vec<i64> = book.levels(Side::Buy).map(|(p, _)| p.0).collect();
        assert_eq!(prices, vec![100, 99, 90, 80]);
        assert_eq!(book.level_qty(Side::Buy, Price(90)), Qty(1));
        assert_eq!(book.level_qty(Side::Buy, Price(95)), Qty(0));
        let snap = book.snapshot(2, Seq(7));
        assert_eq!(snap.bids, vec![(Price(100), Qty(1)), (Price(99), Qty(1))]);
        assert_eq!(snap.seq, Seq(7));
        book.check_invariants();
    }
}
