//! Property tests over random command sequences: the book never crosses, every order's
//! quantity is accounted for, money is conserved, snapshot + deltas rebuild the book, and
//! replay is byte-for-byte deterministic. Also the book structure against a naive model.

mod common;

use std::collections::HashMap;

use common::*;
use proptest::prelude::*;
use tickgate_engine::*;

#[derive(Clone, Debug)]
enum Op {
    New { account: u32, sell: bool, order_type: u8, price: i64, qty: i64, stp: u8 },
    Cancel { pick: usize, account_hint: bool },
    Replace { pick: usize, price: i64, qty: i64, total: bool },
    Withdraw { account: u32, usd: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..4, any::<bool>(), 0u8..5, 95i64..106, 1i64..12, 0u8..4).prop_map(
            |(account, sell, order_type, price, qty, stp)| Op::New { account, sell, order_type, price, qty, stp }
        ),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, account_hint)| Op::Cancel { pick, account_hint }),
        2 => (any::<usize>(), 95i64..106, 1i64..12, any::<bool>()).prop_map(|(pick, price, qty, total)| Op::Replace { pick, price, qty, total }),
        1 => (0u32..4, 1i64..2_000).prop_map(|(account, usd)| Op::Withdraw { account, usd }),
    ]
}

/// Turns ops into concrete commands (ids resolved against orders placed so far).
fn commands(ops: &[Op]) -> Vec<Command> {
    let mut out = Vec::new();
    for account in 0..4u32 {
        for (asset, amount) in [(USD, 20_000), (BTC, 150)] {
            out.push(CommandKind::Transfer(Transfer {
                account: AccountId(account),
                asset,
                amount: Amount(amount),
                request_id: 0,
            }));
        }
    }
    let mut placed: Vec<(OrderId, u32)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let kind = match *op {
            Op::New { account, sell, order_type, price, qty, stp } => {
                let id = OrderId(i as u64 + 1);
                placed.push((id, account));
                CommandKind::New(NewOrder {
                    key: None,
                    order_id: id,
                    client_order_id: i as u64,
                    account: AccountId(account),
                    instrument: MKT,
                    side: if sell { Side::Sell } else { Side::Buy },
                    order_type: OrderType::from_u8(order_type).expect("0..5"),
                    price: Price(price),
                    qty: Qty(qty),
                    stp: StpMode::from_u8(stp).expect("0..4"),
                })
            }
            Op::Cancel { pick, account_hint } if !placed.is_empty() => {
                let (id, account) = placed[pick % placed.len()];
                // Sometimes the wrong account: must be refused without effect.
                let account = if account_hint { account } else { (account + 1) % 4 };
                CommandKind::Cancel(CancelOrder {
                    order_id: id,
                    account: AccountId(account),
                    instrument: MKT,
                })
            }
            Op::Replace { pick, price, qty, total } if !placed.is_empty() => {
                let (id, account) = placed[pick % placed.len()];
                CommandKind::Replace(ReplaceOrder {
                    order_id: id,
                    account: AccountId(account),
                    instrument: MKT,
                    price: Price(price),
                    qty: if total {
                        ReplaceQty::Total(Qty(qty))
                    } else {
                        ReplaceQty::Open(Qty(qty))
                    },
                })
            }
            Op::Withdraw { account, usd } => CommandKind::Transfer(Transfer {
                account: AccountId(account),
                asset: USD,
                amount: Amount(-usd),
                request_id: 1,
            }),
            _ => continue,
        };
        out.push(kind);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, kind)| Command { ts: UnixNanos(1_000 + i as u64), kind })
        .collect()
}

#[derive(Default, Debug)]
struct Tracked {
    open: i64,
    filled: i64,
    canceled: i64,
    submitted: i64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_invariants_hold_for_random_flow(ops in prop::collection::vec(op(), 1..250), cut in 0usize..250) {
        let cmds = commands(&ops);
        let mut engine = Engine::new(&spec(), |_| true).expect("valid");
        let mut events = Vec::new();
        let mut deposits: HashMap<u16, i128> = HashMap::new();
        let mut orders: HashMap<OrderId, Tracked> = HashMap::new();
        let cut = cut % cmds.len();
        let mut replica: Option<L2Book> = None;
        let mut rejections = 0u64;
        for (i, cmd) in cmds.iter().enumerate() {
            if i == cut {
                replica = Some(L2Book::from_snapshot(&engine.book_snapshot(MKT, usize::MAX).expect("owned")));
            }
            let start = events.len();
            engine.process(cmd, &mut events);
            engine.check_invariants(); // not crossed, holds == open orders' needs, held <= total
            for e in &events[start..] {
                match e {
                    Event::Exec(r) => match r.kind {
                        ExecKind::Accepted => {
                            let t = orders.entry(r.order_id).or_default();
                            t.open = r.leaves_qty.0;
                            t.submitted = r.leaves_qty.0;
                        }
                        ExecKind::Replaced => {
                            let t = orders.get_mut(&r.order_id).expect("replaced a known order");
                            if let CommandKind::Replace(ReplaceOrder { qty: ReplaceQty::Total(q), .. }) = cmd.kind {
                                // A total counts what filled before: never more than it in all.
                                prop_assert_eq!(r.leaves_qty.0, (q.0 - t.filled).max(0), "{:?}", r);
                            }
                            t.submitted += r.leaves_qty.0 - t.open;
                            t.open = r.leaves_qty.0;
                        }
                        ExecKind::Canceled => {
                            let t = orders.get_mut(&r.order_id).expect("canceled a known order");
                            t.canceled += t.open;
                            t.open = 0;
                        }
                        ExecKind::PartiallyFilled | ExecKind::Filled => {
                            let t = orders.get_mut(&r.order_id).expect("filled a known order");
                            t.open -= r.last_qty.0;
                            t.filled += r.last_qty.0;
                            prop_assert_eq!(t.filled, r.cum_qty.0);
                            prop_assert_eq!(t.open, r.leaves_qty.0);
                            prop_assert_eq!(r.kind == ExecKind::Filled, t.open == 0);
                        }
                        ExecKind::Rejected => rejections += 1,
                        ExecKind::CancelRejected | ExecKind::ReplaceRejected => {
                            rejections += 1;
                            // A refused cancel or replace tells the order's true open quantity
                            // (none when it is not the account's order: nothing leaks).
                            let open = match r.reason {
                                Some(RejectReason::UnknownOrder) => 0,
                                _ => orders.get(&r.order_id).map_or(0, |t| t.open),
                            };
                            prop_assert_eq!(r.leaves_qty.0, open, "{:?}", r);
                        }
                    },
                    Event::BookDelta(d) => {
                        if let Some(book) = replica.as_mut() {
                            prop_assert_eq!(book.apply(d), Ok(true));
                        }
                    }
                    Event::Trade(t) => prop_assert!(t.qty.0 > 0),
                    Event::Bbo(b) => prop_assert!(b.bid_price.0 == 0 || b.ask_price.0 == 0 || b.bid_price < b.ask_price),
                    Event::Transfer(t) => *deposits.entry(t.asset.0).or_default() += i128::from(t.amount.0),
                }
            }
        }
        // Every refusal is counted once.
        prop_assert_eq!(engine.counters().rejects, rejections);
        // Quantity: filled + resting + canceled = submitted, for every order.
        let book = engine.book(MKT).expect("owned");
        for (id, t) in &orders {
            let resting = book.find(*id).map_or(0, |slot| book.order(slot).leaves.0);
            prop_assert_eq!(resting, t.open, "order {:?}", id);
            prop_assert_eq!(t.filled + t.open + t.canceled, t.submitted, "order {:?}: {:?}", id, t);
        }
        // Money: every asset's total over all accounts is what was transferred in.
        for asset in [USD, BTC] {
            prop_assert_eq!(engine.ledger().asset_total(asset), deposits.get(&asset.0).copied().unwrap_or(0));
        }
        // Snapshot + later deltas = the engine's own book.
        let replica = replica.expect("cut is within the commands");
        prop_assert_eq!(replica.snapshot(usize::MAX), engine.book_snapshot(MKT, usize::MAX).expect("owned"));

        // Replay: same commands, byte-identical events and state.
        let mut again = Engine::new(&spec(), |_| true).expect("valid");
        let mut replayed = Vec::new();
        for cmd in &cmds {
            again.process(cmd, &mut replayed);
        }
        let bytes = |evs: &[Event]| { let mut b = Vec::new(); for e in evs { e.write_bytes(&mut b); } b };
        prop_assert_eq!(bytes(&events), bytes(&replayed));
        prop_assert_eq!(engine.state_digest(), again.state_digest());
    }

    #[test]
    fn order_book_matches_a_naive_model(ops in prop::collection::vec((0u8..4, 0u64..40, any::<bool>(), 1i64..8, 1i64..5), 1..300)) {
        // The model: a Vec of resting orders in arrival order.
        let mut book = OrderBook::new(1_000);
        let mut model: Vec<RestingOrder> = Vec::new();
        for (i, (op, pick, sell, price, qty)) in ops.into_iter().enumerate() {
            let side = if sell { Side::Sell } else { Side::Buy };
            match op {
                0 | 1 => {
                    // Keep the model book uncrossed: bids 1..8, asks 11..18.
                    let price = if sell { price + 10 } else { price };
                    let order = RestingOrder { id: OrderId(i as u64), client_order_id: 0, account: AccountId(0), price: Price(price), leaves: Qty(qty), filled: Qty(0), side, order_type: OrderType::Limit, stp: StpMode::None };
                    book.insert(order).expect("capacity");
                    model.push(order);
                }
                2 if !model.is_empty() => {
                    let idx = pick as usize % model.len();
                    let slot = book.find(model[idx].id).expect("model order is in the book");
                    book.remove(slot);
                    model.remove(idx);
                }
                _ => {
                    if let Some(slot) = book.front(side) {
                        let id = book.order(slot).id;
                        let idx = model.iter().position(|o| o.id == id).expect("front is in the model");
                        let fill = Qty(qty.min(model[idx].leaves.0));
                        book.fill(slot, fill);
                        model[idx].leaves.0 -= fill.0;
                        model[idx].filled.0 += fill.0;
                        if model[idx].leaves.0 == 0 {
                            model.remove(idx);
                        }
                    }
                }
            }
            book.check_invariants();
            for side in [Side::Buy, Side::Sell] {
                let mut expected: Vec<RestingOrder> = model.iter().filter(|o| o.side == side).copied().collect();
                // Price-time: best price first, then arrival order (stable sort).
                expected.sort_by_key(|o| if side == Side::Buy { -o.price.0 } else { o.price.0 });
                let actual: Vec<RestingOrder> = book.orders(side).copied().collect();
                prop_assert_eq!(actual, expected);
            }
        }
    }
}
