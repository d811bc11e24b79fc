//! Every order type, reject reason, self-trade mode, replace rule, and the money they move.

mod common;

use common::*;
use tickgate_engine::*;

use ExecKind::*;
use OrderType::*;
use Side::*;

#[test]
fn limit_rests_with_hold_then_fills_at_maker_price_with_improvement_returned() {
    let mut h = Harness::new();
    h.fund(1, 0, 10);
    h.fund(2, 10_000, 0);
    let (ask, out) = h.order(1, Sell, Limit, 100, 4);
    assert_eq!(kinds(&out), vec![(Accepted, None)]);
    assert_eq!(h.balance(1, BTC), Balance { total: Amount(10), held: Amount(4) });

    // Buy 3 at limit 105: fills 3 at the maker's 100; hold was 105*3, debit is 100*3.
    let (bid, out) = h.order(2, Buy, Limit, 105, 3);
    let t = trades(&out);
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].price, t[0].qty, t[0].maker_order, t[0].taker_order),
        (Price(100), Qty(3), ask, bid)
    );
    assert_eq!(t[0].taker_side, Buy);
    assert_eq!(kinds(&out), vec![(Accepted, None), (PartiallyFilled, None), (Filled, None)]);
    let maker = reports(&out)[1];
    assert_eq!(
        (maker.order_id, maker.leaves_qty, maker.cum_qty, maker.last_price),
        (ask, Qty(1), Qty(3), Price(100))
    );
    assert_eq!(h.balance(2, USD), Balance { total: Amount(9_700), held: Amount(0) });
    assert_eq!(h.balance(2, BTC).total, Amount(3));
    assert_eq!(h.balance(1, USD).total, Amount(300));
    assert_eq!(h.balance(1, BTC), Balance { total: Amount(7), held: Amount(1) });
    assert_eq!(h.engine.ledger().position(AccountId(2), MKT), Qty(3));
    assert_eq!(h.engine.ledger().position(AccountId(1), MKT), Qty(-3));
    assert_eq!(h.book().asks, vec![(Price(100), Qty(1))]);
}

#[test]
fn taker_sweeps_levels_in_price_time_order() {
    let mut h = Harness::new();
    h.fund(1, 0, 100);
    h.fund(3, 0, 100);
    h.fund(2, 100_000, 0);
    let (a1, _) = h.order(1, Sell, Limit, 101, 2);
    let (a2, _) = h.order(3, Sell, Limit, 100, 2);
    let (a3, _) = h.order(1, Sell, Limit, 100, 2);
    let (_, out) = h.order(2, Buy, Limit, 101, 5);
    let t: Vec<(OrderId, i64, i64)> =
        trades(&out).iter().map(|t| (t.maker_order, t.price.0, t.qty.0)).collect();
    assert_eq!(t, vec![(a2, 100, 2), (a3, 100, 2), (a1, 101, 1)]);
    // Deltas are coalesced per level: one per touched level, final quantities.
    let deltas: Vec<(i64, i64)> = out
        .iter()
        .filter_map(|e| if let Event::BookDelta(d) = e { Some((d.price.0, d.qty.0)) } else { None })
        .collect();
    assert_eq!(deltas, vec![(100, 0), (101, 1)]);
    assert_eq!(h.balance(2, USD).total, Amount(100_000 - 400 - 101));
}

#[test]
fn ioc_cancels_its_remainder_and_releases_the_hold() {
    let mut h = Harness::new();
    h.fund(1, 0, 10);
    h.fund(2, 10_000, 0);
    h.order(1, Sell, Limit, 100, 2);
    let (_, out) = h.order(2, Buy, Ioc, 100, 5);
    assert_eq!(
        kinds(&out),
        vec![
            (Accepted, None),
            (Filled, None),
            (PartiallyFilled, None),
            (Canceled, Some(RejectReason::NoLiquidity))
        ]
    );
    assert_eq!(h.balance(2, USD), Balance { total: Amount(9_800), held: Amount(0) });
    assert!(h.book().bids.is_empty(), "IOC never rests");
}

#[test]
fn fok_fills_completely_or_not_at_all() {
    let mut h = Harness::new();
    h.fund(1, 0, 10);
    h.fund(2, 10_000, 0);
    h.order(1, Sell, Limit, 100, 2);
    h.order(1, Sell, Limit, 102, 2);
    let before = h.engine.state_digest();
    let (_, out) = h.order(2, Buy, Fok, 101, 3);
    assert_eq!(rejection(&out), Some(RejectReason::FokUnfillable));
    assert!(trades(&out).is_empty());
    let after_reject = h.engine.state_digest();
    assert_ne!(before, after_reject, "only the report sequence moved");
    assert_eq!(h.balance(2, USD).held, Amount(0));
    let (_, out) = h.order(2, Buy, Fok, 102, 3);
    assert_eq!(trades(&out).iter().map(|t| t.qty.0).sum::<i64>(), 3);
    assert_eq!(reports(&out).last().map(|r| r.kind), Some(Filled));
}

#[test]
fn fok_does_not_count_own_liquidity_under_stp() {
    let mut h = Harness::new();
    h.fund(1, 10_000, 10);
    h.fund(2, 0, 10);
    h.order(1, Sell, Limit, 100, 2);
    h.order(2, Sell, Limit, 100, 1);
    let (_, out) = h.order(1, Buy, Fok, 100, 2);
    assert_eq!(rejection(&out), Some(RejectReason::FokUnfillable));
    let (_, out) = h.order_stp(1, Buy, Fok, 100, 3, StpMode::None);
    assert_eq!(trades(&out).len(), 2, "with STP off its own orders count and trade");
}

#[test]
fn market_orders_trade_until_out_of_liquidity_or_funds() {
    let mut h = Harness::new();
    h.fund(1, 0, 10);
    h.fund(2, 250, 0);
    h.order(1, Sell, Limit, 100, 1);
    h.order(1, Sell, Limit, 110, 5);
    // 250 USD buys 1 @100 then 1 @110 (210), and cannot afford a third.
    let (_, out) = h.order(2, Buy, Market, 0, 10);
    assert_eq!(
        trades(&out).iter().map(|t| (t.price.0, t.qty.0)).collect::<Vec<_>>(),
        vec![(100, 1), (110, 1)]
    );
    assert_eq!(
        reports(&out).last().map(|r| (r.kind, r.reason)),
        Some((Canceled, Some(RejectReason::InsufficientFunds)))
    );
    assert_eq!(h.balance(2, USD), Balance { total: Amount(40), held: Amount(0) });

    // Market sell holds base up front and stops when the book runs dry.
    h.fund(3, 0, 3);
    h.fund(4, 10_000, 0);
    h.order(4, Buy, Limit, 90, 1);
    let (_, out) = h.order(3, Sell, Market, 0, 3);
    assert_eq!(trades(&out).len(), 1);
    assert_eq!(
        reports(&out).last().map(|r| (r.kind, r.reason)),
        Some((Canceled, Some(RejectReason::NoLiquidity)))
    );
    assert_eq!(h.balance(3, BTC), Balance { total: Amount(2), held: Amount(0) });
    let (_, out) = h.order(3, Sell, Market, 0, 5);
    assert_eq!(rejection(&out), Some(RejectReason::InsufficientFunds));
    let (_, out) = h.order(5, Buy, Market, 0, 1);
    assert_eq!(rejection(&out), Some(RejectReason::InsufficientFunds), "nothing to spend");
}

#[test]
fn post_only_rests_or_is_rejected_if_it_would_cross() {
    let mut h = Harness::new();
    h.fund(1, 0, 10);
    h.fund(2, 10_000, 0);
    h.order(1, Sell, Limit, 100, 1);
    let (_, out) = h.order(2, Buy, PostOnly, 100, 1);
    assert_eq!(rejection(&out), Some(RejectReason::WouldCross));
    assert_eq!(h.balance(2, USD).held, Amount(0));
    let (_, out) = h.order(2, Buy, PostOnly, 99, 1);
    assert_eq!(kinds(&out), vec![(Accepted, None)]);
    assert_eq!(h.book().bids, vec![(Price(99), Qty(1))]);
}

#[test]
fn cancel_releases_hold_and_only_the_owner_can_cancel() {
    let mut h = Harness::new();
    h.fund(2, 10_000, 0);
    let (id, _) = h.order(2, Buy, Limit, 50, 10);
    assert_eq!(h.balance(2, USD).held, Amount(500));
    let out = h.cancel(3, id);
    assert_eq!(rejection(&out), Some(RejectReason::UnknownOrder), "another account sees nothing");
    assert_eq!(reports(&out)[0].account, AccountId(3));
    assert_eq!(reports(&out)[0].kind, ExecKind::CancelRejected);
    let out = h.cancel(2, id);
    assert_eq!(kinds(&out), vec![(Canceled, Some(RejectReason::UserCanceled))]);
    assert_eq!(h.balance(2, USD), Balance { total: Amount(10_000), held: Amount(0) });
    assert!(h.book().bids.is_empty());
    assert_eq!(rejection(&h.cancel(2, id)), Some(RejectReason::UnknownOrder));
}

#[test]
fn replace_down_keeps_priority_other_changes_lose_it() {
    let mut h = Harness::new();
    h.fund(1, 100_000, 0);
    h.fund(2, 100_000, 0);
    h.fund(7, 0, 100);
    let (first, _) = h.order(1, Buy, Limit, 100, 5);
    let (second, _) = h.order(2, Buy, Limit, 100, 5);
    let out = h.replace(1, first, 100, 3);
    assert_eq!(kinds(&out), vec![(Replaced, None)]);
    assert_eq!(h.balance(1, USD).held, Amount(300));
    let (_, out) = h.order(7, Sell, Ioc, 100, 1);
    assert_eq!(trades(&out)[0].maker_order, first, "quantity down kept its place");

    // Quantity up: goes to the back of the queue.
    h.replace(1, first, 100, 4);
    let (_, out) = h.order(7, Sell, Ioc, 100, 1);
    assert_eq!(trades(&out)[0].maker_order, second);

    // Price change away and back: behind `second` again, hold follows the new price.
    h.replace(2, second, 99, 4);
    assert_eq!(h.balance(2, USD).held, Amount(99 * 4));
    h.replace(2, second, 100, 4);
    let (_, out) = h.order(7, Sell, Ioc, 100, 1);
    assert_eq!(trades(&out)[0].maker_order, first);
}

#[test]
fn replace_rejections_leave_the_order_untouched() {
    let mut h = Harness::new();
    h.fund(1, 1_000, 0);
    h.fund(5, 0, 10);
    let (id, _) = h.order(1, Buy, Limit, 100, 5);
    let book = h.book();
    for (price, qty, reason) in [
        (100, 5, RejectReason::NoChange),
        (100, 0, RejectReason::NonPositiveQty),
        (0, 5, RejectReason::PriceOutOfBand),
        (100, 20, RejectReason::InsufficientFunds),
    ] {
        let rejects = h.engine.counters().rejects;
        let out = h.replace(1, id, price, qty);
        assert_eq!(rejection(&out), Some(reason));
        // Its own kind, with the order's true open quantity, counted once.
        let r = reports(&out)[0];
        assert_eq!((r.kind, r.leaves_qty), (ExecKind::ReplaceRejected, Qty(5)));
        assert_eq!(h.engine.counters().rejects, rejects + 1);
        assert_eq!(h.book(), book);
        assert_eq!(h.balance(1, USD).held, Amount(500));
    }
    assert_eq!(rejection(&h.replace(2, id, 100, 1)), Some(RejectReason::UnknownOrder));
    // A post-only order cannot be re-priced through the spread.
    h.order(5, Sell, Limit, 110, 1);
    let (po, _) = h.order(1, Buy, PostOnly, 90, 1);
    assert_eq!(rejection(&h.replace(1, po, 110, 1)), Some(RejectReason::WouldCross));
}

#[test]
fn a_total_replace_counts_what_filled_before_it() {
    let mut h = Harness::new();
    h.fund(1, 100_000, 0);
    h.fund(2, 100_000, 0);
    h.fund(7, 0, 100);
    let (first, _) = h.order(1, Buy, Limit, 100, 10);
    let (second, _) = h.order(2, Buy, Limit, 100, 10);
    h.order(7, Sell, Ioc, 100, 3);
    // "Open 5" as a total: 3 filled, so 5 in all leaves 2 open, kept in front.
    let out = h.replace_total(1, first, 100, 5);
    assert_eq!(kinds(&out), vec![(Replaced, None)]);
    let r = reports(&out)[0];
    assert_eq!((r.leaves_qty, r.cum_qty), (Qty(2), Qty(3)));
    assert_eq!(h.balance(1, USD).held, Amount(200));
    assert_eq!(h.book().bids, vec![(Price(100), Qty(12))]);
    let (_, out) = h.order(7, Sell, Ioc, 100, 1);
    assert_eq!(trades(&out)[0].maker_order, first, "quantity down kept its place");
    // The same total again leaves what is open as it is: no change.
    assert_eq!(rejection(&h.replace_total(1, first, 100, 5)), Some(RejectReason::NoChange));
    // A total at or below what filled (4): taken, nothing open, and the order ends.
    let out = h.replace_total(1, first, 100, 4);
    assert_eq!(kinds(&out), vec![(Replaced, None), (Canceled, Some(RejectReason::UserCanceled))]);
    assert!(reports(&out).iter().all(|r| r.leaves_qty == Qty(0) && r.cum_qty == Qty(4)));
    assert_eq!(h.balance(1, USD).held, Amount(0));
    assert_eq!(h.book().bids, vec![(Price(100), Qty(10))]);
    assert_eq!(rejection(&h.replace_total(1, first, 100, 5)), Some(RejectReason::UnknownOrder));
    // A new price with the total unchanged moves what is open, not more.
    h.order(7, Sell, Ioc, 100, 6);
    let out = h.replace_total(2, second, 99, 10);
    assert_eq!((reports(&out)[0].kind, reports(&out)[0].leaves_qty), (Replaced, Qty(4)));
    assert_eq!(h.book().bids, vec![(Price(99), Qty(4))]);
    assert_eq!(h.balance(2, USD).held, Amount(99 * 4));
    // The total is checked as a new order's quantity is.
    assert_eq!(rejection(&h.replace_total(2, second, 99, 0)), Some(RejectReason::NonPositiveQty));
    // An open quantity is what stays open, whatever filled: 6 filled, 5 more.
    let out = h.replace(2, second, 99, 5);
    assert_eq!((reports(&out)[0].leaves_qty, reports(&out)[0].cum_qty), (Qty(5), Qty(6)));
    h.engine.check_invariants();
}

#[test]
fn replace_through_the_spread_trades() {
    let mut h = Harness::new();
    h.fund(1, 10_000, 0);
    h.fund(2, 0, 10);
    let (bid, _) = h.order(1, Buy, Limit, 90, 3);
    h.order(2, Sell, Limit, 95, 2);
    let out = h.replace(1, bid, 95, 3);
    assert_eq!(kinds(&out)[0], (Replaced, None));
    assert_eq!(trades(&out).len(), 1);
    assert_eq!(h.book().bids, vec![(Price(95), Qty(1))]);
    assert_eq!(h.balance(1, USD), Balance { total: Amount(10_000 - 190), held: Amount(95) });
}

#[test]
fn self_trade_prevention_modes() {
    let setup = || {
        let mut h = Harness::new();
        h.fund(1, 10_000, 10);
        h.fund(2, 0, 10);
        let (own, _) = h.order(1, Sell, Limit, 100, 2);
        h.order(2, Sell, Limit, 100, 2);
        (h, own)
    };
    // Cancel resting: the own order goes, matching continues with the other account.
    let (mut h, own) = setup();
    let (_, out) = h.order_stp(1, Buy, Limit, 100, 2, StpMode::CancelResting);
    let r = reports(&out);
    assert_eq!(
        (r[1].order_id, r[1].kind, r[1].reason),
        (own, Canceled, Some(RejectReason::SelfTrade))
    );
    assert_eq!(trades(&out).len(), 1);
    assert_eq!(h.balance(1, BTC).held, Amount(0));

    // Cancel incoming: the taker stops, the resting order stays.
    let (mut h, _) = setup();
    let (_, out) = h.order_stp(1, Buy, Limit, 100, 2, StpMode::CancelIncoming);
    assert_eq!(kinds(&out), vec![(Accepted, None), (Canceled, Some(RejectReason::SelfTrade))]);
    assert_eq!(h.book().asks, vec![(Price(100), Qty(4))]);
    assert!(h.book().bids.is_empty(), "a self-trade-stopped limit does not rest");
    assert_eq!(h.balance(1, USD).held, Amount(0));

    // Cancel both.
    let (mut h, own) = setup();
    let (_, out) = h.order_stp(1, Buy, Limit, 100, 2, StpMode::CancelBoth);
    let r = reports(&out);
    assert_eq!((r[1].order_id, r[1].kind), (own, Canceled));
    assert_eq!(r[2].kind, Canceled);
    assert_eq!(h.book().asks, vec![(Price(100), Qty(2))]);

    // None: trades with itself, balances net to zero.
    let (mut h, own) = setup();
    let (_, out) = h.order_stp(1, Buy, Limit, 100, 1, StpMode::None);
    assert_eq!(trades(&out)[0].maker_order, own);
    assert_eq!(h.balance(1, USD), Balance { total: Amount(10_000), held: Amount(0) });
    assert_eq!(h.balance(1, BTC).total, Amount(10));
}

#[test]
fn every_validation_reject_reason() {
    let mut spec = spec();
    spec.instruments[0].tick_size = Price(5);
    spec.instruments[0].lot_size = Qty(2);
    spec.instruments[0].price_min = Price(5);
    spec.instruments[0].qty_max = Qty(100);
    spec.orders_per_book_max = 2;
    let mut h = Harness::with_spec(spec);
    h.fund(1, 1_000_000, 100);
    let new = |account: u32, instrument: u32, price: i64, qty: i64, id: u64| {
        CommandKind::New(NewOrder {
            key: None,
            order_id: OrderId(id),
            client_order_id: 0,
            account: AccountId(account),
            instrument: InstrumentId(instrument),
            side: Buy,
            order_type: Limit,
            price: Price(price),
            qty: Qty(qty),
            stp: StpMode::CancelResting,
        })
    };
    let cases = [
        (new(1, 7, 100, 2, 100), RejectReason::UnknownInstrument),
        (new(99, 0, 100, 2, 101), RejectReason::UnknownAccount),
        (new(1, 0, 100, 0, 102), RejectReason::NonPositiveQty),
        (new(1, 0, 100, -2, 103), RejectReason::NonPositiveQty),
        (new(1, 0, 100, 3, 104), RejectReason::InvalidQty),
        (new(1, 0, 100, 102, 105), RejectReason::InvalidQty),
        (new(1, 0, 101, 2, 106), RejectReason::InvalidPrice),
        (new(1, 0, 1_005, 2, 107), RejectReason::PriceOutOfBand),
        (new(1, 0, 0, 2, 108), RejectReason::PriceOutOfBand),
        (new(2, 0, 100, 2, 109), RejectReason::InsufficientFunds),
    ];
    for (cmd, reason) in cases {
        let out = h.run(cmd);
        assert_eq!(rejection(&out), Some(reason), "{cmd:?}");
        assert_eq!(out.len(), 1, "a rejection is one report and nothing else");
    }
    assert_eq!(rejection(&h.run(new(1, 0, 100, 2, 1))), None);
    assert_eq!(rejection(&h.run(new(1, 0, 100, 2, 1))), Some(RejectReason::DuplicateOrderId));
    assert_eq!(rejection(&h.run(new(1, 0, 100, 2, 2))), None);
    assert_eq!(rejection(&h.run(new(1, 0, 100, 2, 3))), Some(RejectReason::BookFull));
    let transfer = |account, asset, amount| {
        CommandKind::Transfer(Transfer {
            account: AccountId(account),
            asset: AssetId(asset),
            amount: Amount(amount),
            request_id: 7,
        })
    };
    assert_eq!(rejection(&h.run(transfer(1, 9, 1))), Some(RejectReason::UnknownAsset));
    assert_eq!(rejection(&h.run(transfer(99, 0, 1))), Some(RejectReason::UnknownAccount));
    assert_eq!(
        rejection(&h.run(transfer(1, 0, -1_000_000))),
        Some(RejectReason::InsufficientFunds),
        "held funds cannot leave"
    );
    assert_eq!(rejection(&h.run(transfer(1, 0, -999_600))), None);
    assert_eq!(h.balance(1, USD), Balance { total: Amount(400), held: Amount(400) });
}

#[test]
fn channels_are_gap_free_and_bbo_only_on_change() {
    let mut h = Harness::new();
    h.fund(1, 100_000, 100);
    h.fund(2, 100_000, 100);
    h.order(1, Buy, Limit, 90, 1);
    h.order(1, Buy, Limit, 89, 1); // below the top: no BBO event
    h.order(2, Sell, Limit, 95, 3);
    h.order(2, Buy, Limit, 95, 2);
    h.order(1, Sell, Ioc, 80, 5);
    let (mut book, mut bbo, mut trade, mut exec) = (0, 0, 0, std::collections::HashMap::new());
    let (mut bbo_events, mut last_top) = (0, None);
    for e in &h.events {
        match e {
            Event::BookDelta(d) => {
                book += 1;
                assert_eq!(d.seq.0, book);
            }
            Event::Bbo(b) => {
                bbo += 1;
                bbo_events += 1;
                assert_eq!(b.seq.0, bbo);
                last_top = Some(((b.bid_price, b.bid_qty), (b.ask_price, b.ask_qty)));
            }
            Event::Trade(t) => {
                trade += 1;
                assert_eq!(t.seq.0, trade);
            }
            // Transfers and executions share the account's sequence.
            Event::Exec(ExecReport { account, seq, .. })
            | Event::Transfer(TransferReport { account, seq, .. }) => {
                let s = exec.entry(*account).or_insert(0u64);
                *s += 1;
                assert_eq!(seq.0, *s, "per-account sequence");
            }
        }
    }
    assert_eq!(bbo_events, 4, "89 bid did not move the top");
    let ChannelSeqs { trades: t, book: b, bbo: o, bid, ask } = h.engine.channel_seqs(MKT).unwrap();
    assert_eq!((t.0, b.0, o.0), (trade, book, bbo));
    assert_eq!(Some((bid, ask)), last_top, "the top now is what the last bbo event said");
    assert_eq!(h.book().seq.0, book, "snapshot carries the book sequence");
}

#[test]
fn events_carry_their_command_timestamp() {
    let mut h = Harness::new();
    h.fund(1, 0, 10);
    h.fund(2, 1_000, 0);
    h.order(1, Sell, Limit, 100, 1);
    let before = h.events.len();
    h.order(2, Buy, Limit, 100, 1);
    let ts: Vec<u64> = h.events[before..].iter().map(|e| e.ts().0).collect();
    assert!(ts.len() >= 5);
    assert!(ts.iter().all(|&t| t == ts[0]), "one command, one timestamp: {ts:?}");
}

#[test]
fn a_halted_instrument_rejects_new_orders_and_replaces_but_takes_cancels() {
    let mut h = Harness::new();
    h.fund(1, 1_000_000, 100);
    let (resting, _) = h.order(1, Side::Sell, OrderType::Limit, 100, 5);
    let (other, _) = h.order(1, Side::Sell, OrderType::Limit, 101, 5);
    assert!(h.run(CommandKind::Status(TradingStatus { instrument: MKT, halted: true })).is_empty());
    assert_eq!(h.engine.is_halted(MKT), Some(true));
    let (_, out) = h.order(1, Side::Buy, OrderType::Ioc, 100, 1);
    assert_eq!(rejection(&out), Some(RejectReason::InstrumentHalted));
    let refused = h.replace(1, resting, 99, 5);
    assert_eq!(rejection(&refused), Some(RejectReason::InstrumentHalted));
    assert_eq!(reports(&refused)[0].leaves_qty, Qty(5), "the order is still open, with 5");
    let canceled = h.cancel(1, other);
    assert_eq!(kinds(&canceled), vec![(ExecKind::Canceled, Some(RejectReason::UserCanceled))]);
    h.run(CommandKind::Status(TradingStatus { instrument: MKT, halted: false }));
    h.fund(2, 1_000_000, 0);
    let (_, out) = h.order(2, Side::Buy, OrderType::Ioc, 100, 1);
    assert_eq!(trades(&out).len(), 1, "trading again after the resume");
    h.engine.check_invariants();
}

#[test]
fn an_idempotency_key_places_one_order_and_refuses_reuse() {
    let mut h = Harness::new();
    h.fund(1, 1_000_000, 0);
    h.fund(2, 1_000_000, 0);
    let key = IdempotencyKey::from_text("k1");
    let keyed = |id: u64, account: u32, price: i64| {
        CommandKind::New(NewOrder {
            key: Some(key),
            order_id: OrderId(id),
            client_order_id: 0,
            account: AccountId(account),
            instrument: MKT,
            side: Buy,
            order_type: Limit,
            price: Price(price),
            qty: Qty(1),
            stp: StpMode::None,
        })
    };
    let out = h.run(keyed(100, 1, 50));
    assert_eq!(kinds(&out), vec![(Accepted, None)]);
    // The same request again: refused as a duplicate, nothing new rests or is held.
    let rejects = h.engine.counters().rejects;
    let out = h.run(keyed(101, 1, 50));
    assert_eq!(rejection(&out), Some(RejectReason::DuplicateRequest));
    assert_eq!(h.engine.counters().rejects, rejects + 1);
    assert_eq!(h.book().bids, vec![(Price(50), Qty(1))]);
    assert_eq!(h.balance(1, USD).held, Amount(50));
    // The same key for another order: refused as a reuse.
    assert_eq!(rejection(&h.run(keyed(102, 1, 51))), Some(RejectReason::IdempotencyKeyReused));
    // Another account's key with the same text is its own.
    assert_eq!(kinds(&h.run(keyed(103, 2, 50))), vec![(Accepted, None)]);
    let record = h.engine.key_record(AccountId(1), key, UnixNanos(10)).expect("remembered");
    assert_eq!(record.order_id, OrderId(100));
}

#[test]
fn a_post_only_cross_is_counted_once() {
    let mut h = Harness::new();
    h.fund(1, 1_000_000, 0);
    h.fund(5, 0, 10);
    h.order(5, Sell, Limit, 100, 1);
    let rejects = h.engine.counters().rejects;
    let (_, out) = h.order(1, Buy, PostOnly, 100, 1);
    assert_eq!(rejection(&out), Some(RejectReason::WouldCross));
    assert_eq!(h.engine.counters().rejects, rejects + 1);
}
