//! The engine on its own thread: concurrent submitters, concurrent readers (one slow), a
//! full queue answered with back-pressure, and queries answered between commands.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use tickgate_engine::runtime::{EngineRuntime, RuntimeConfig, SubmitError};
use tickgate_engine::*;

fn config(ring_capacity: usize) -> RuntimeConfig {
    let mut spec = spec();
    spec.orders_per_book_max = 1 << 16;
    RuntimeConfig { spec, ring_capacity, queue_capacity: 1024, ..RuntimeConfig::default() }
}

#[test]
fn submitters_and_readers_run_concurrently_and_a_slow_reader_learns_what_it_missed() {
    let runtime = EngineRuntime::start(config(1 << 12)).expect("valid config");
    let handle = runtime.handle();
    let ring = Arc::clone(handle.ring(0).expect("shard 0"));
    let done = Arc::new(AtomicBool::new(false));

    let reader = |slow: bool| {
        let mut reader = ring.reader_from_oldest();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let (mut read, mut missed, mut out) = (0u64, 0u64, Vec::with_capacity(1024));
            let mut last_book_seq = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                out.clear();
                let o = reader.read(&mut out, if slow && !finished { 1 } else { 1024 });
                read += o.read as u64;
                missed += o.missed;
                for e in &out {
                    if let Event::BookDelta(d) = e {
                        if o.missed == 0 && last_book_seq != 0 {
                            assert!(d.seq.0 > last_book_seq, "book sequence moves forward");
                        }
                        last_book_seq = d.seq.0;
                    }
                }
                if finished && reader.lag() == 0 {
                    return (read, missed);
                }
                if slow && !finished {
                    std::thread::sleep(Duration::from_millis(2));
                } else if o.read == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    let fast = reader(false);
    let slow = reader(true);

    for account in 0..4u32 {
        for (asset, amount) in [(USD, 1_000_000_000), (BTC, 1_000_000)] {
            submit_retrying(
                &handle,
                CommandKind::Transfer(Transfer {
                    account: AccountId(account),
                    asset,
                    amount: Amount(amount),
                    request_id: 0,
                }),
            );
        }
    }
    let per_thread = 5_000u64;
    let submitters: Vec<_> = (0..3u32)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let side = if (i + u64::from(t)) % 2 == 0 { Side::Buy } else { Side::Sell };
                    let order_type = if i % 7 == 0 { OrderType::Ioc } else { OrderType::Limit };
                    submit_retrying(
                        &handle,
                        CommandKind::New(NewOrder {
                            key: None,
                            order_id: handle.allocate_order_id(),
                            client_order_id: i,
                            account: AccountId(t),
                            instrument: MKT,
                            side,
                            order_type,
                            price: Price(95 + (i % 11) as i64),
                            qty: Qty(1 + (i % 5) as i64),
                            stp: StpMode::CancelResting,
                        }),
                    );
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().expect("submitter");
    }
    // A query is answered in order with the commands before it: all are processed now.
    let counters = retrying(|| handle.digest(0)).counters;
    assert_eq!(counters.commands, 8 + 3 * per_thread);
    let published = ring.head();
    assert_eq!(published, counters.events, "every event is in the ring");
    done.store(true, Ordering::Release);

    let (fast_read, fast_missed) = fast.join().expect("fast reader");
    let (slow_read, slow_missed) = slow.join().expect("slow reader");
    assert_eq!(fast_read + fast_missed, published, "fast reader accounts for every event");
    assert_eq!(slow_read + slow_missed, published, "slow reader accounts for every event");
    assert!(slow_missed > 0, "the slow reader was lapped and told so");
    assert!(slow_missed > fast_missed);
    let engines = runtime.shutdown();
    engines[0].check_invariants();
}

#[test]
fn a_full_queue_is_back_pressure_not_a_drop() {
    let gate = Arc::new(Barrier::new(2));
    let blocked = Arc::new(AtomicBool::new(true));
    let mut config = config(1 << 10);
    config.queue_capacity = 8;
    let (g, b) = (Arc::clone(&gate), Arc::clone(&blocked));
    // The publish hook stalls the engine thread until the test opens the gate.
    config.on_publish = Some(Arc::new(move || {
        if b.swap(false, Ordering::AcqRel) {
            g.wait();
        }
    }));
    let runtime = EngineRuntime::start(config).expect("valid");
    let handle = runtime.handle();
    let transfer = CommandKind::Transfer(Transfer {
        account: AccountId(0),
        asset: USD,
        amount: Amount(1),
        request_id: 0,
    });
    handle.submit(transfer).expect("first command");
    // Wait until the engine is stalled in the hook with an empty queue.
    while handle.queue_len(0) > 0 {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(20));
    let mut accepted = 0;
    let refused = loop {
        match handle.submit(transfer) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(refused, SubmitError::QueueFull);
    assert_eq!(accepted, 8, "exactly the queue's capacity was taken");
    gate.wait();
    let engines = runtime.shutdown();
    assert_eq!(
        engines[0].ledger().balance(AccountId(0), USD).total,
        Amount(9),
        "nothing queued was lost"
    );
    assert_eq!(handle.submit(transfer), Err(SubmitError::Stopped));
}

#[test]
fn snapshots_and_routing_across_shards() {
    let mut cfg = RuntimeConfig { shards: 3, ring_capacity: 1 << 12, ..RuntimeConfig::default() };
    cfg.spec.accounts_max = 4;
    let runtime = EngineRuntime::start(cfg).expect("default markets");
    let handle = runtime.handle();
    assert_eq!(handle.shards(), 3);
    let sol = handle.instrument_by_symbol("SOL-USD").expect("default set").id;
    let shard = handle.shard_of(sol).expect("routed");
    let usd = AssetId(0);
    handle
        .submit_transfer(
            shard,
            Transfer {
                account: AccountId(1),
                asset: usd,
                amount: Amount(1_000_000_000_000),
                request_id: 0,
            },
        )
        .expect("queued");
    let id = handle.allocate_order_id();
    handle
        .submit(CommandKind::New(NewOrder {
            key: None,
            order_id: id,
            client_order_id: 1,
            account: AccountId(1),
            instrument: sol,
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Price(14_990),
            qty: Qty(300),
            stp: StpMode::CancelResting,
        }))
        .expect("queued");
    let snap = handle.book_snapshot(sol, 10).expect("answered");
    assert_eq!(snap.bids, vec![(Price(14_990), Qty(300))]);
    assert_eq!(snap.seq, Seq(1));
    let balances = handle.balances(shard, AccountId(1)).expect("answered").expect("known account");
    assert_eq!(balances[0].held, Amount(14_990 * 300 * 100));
    assert_eq!(handle.balances(shard, AccountId(99)).expect("answered"), None);
    assert_eq!(handle.book_snapshot(InstrumentId(99), 1), Err(SubmitError::UnknownInstrument));
    let ids = handle.reserve_order_ids(10);
    assert_eq!(ids.end - ids.start, 10);
    assert!(ids.start > id.0);
    runtime.shutdown();
}

/// Every command of a shard gets its own, strictly increasing timestamp, however fast the
/// commands come (readers tell commands apart by it: see the gateway's answer gate).
#[test]
fn command_timestamps_strictly_increase() {
    let runtime = EngineRuntime::start(config(1 << 12)).expect("valid");
    let handle = runtime.handle();
    let mut reader = handle.ring(0).expect("shard 0").reader_from_oldest();
    for n in 0..500 {
        let transfer =
            Transfer { account: AccountId(0), asset: USD, amount: Amount(1), request_id: n };
        handle.submit(CommandKind::Transfer(transfer)).expect("queued");
    }
    let engines = runtime.shutdown();
    assert_eq!(engines[0].counters().commands, 500);
    let mut events = Vec::new();
    reader.read(&mut events, 4096);
    let stamps: Vec<u64> = events.iter().map(|e| e.ts().0).collect();
    assert_eq!(stamps.len(), 500);
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

#[test]
fn a_question_to_a_stuck_shard_times_out_instead_of_waiting_forever() {
    // The publish hook runs on the shard thread: holding it there makes the shard stuck.
    let (hold_tx, hold_rx) = crossbeam_channel::bounded::<()>(0);
    let hold_rx = Arc::new(std::sync::Mutex::new(hold_rx));
    let held = Arc::new(AtomicBool::new(true));
    let entered = Arc::new(AtomicBool::new(false));
    let (h, r, e) = (Arc::clone(&held), Arc::clone(&hold_rx), Arc::clone(&entered));
    let mut c = config(1 << 12);
    c.ask_timeout = Duration::from_millis(50);
    c.on_publish = Some(Arc::new(move || {
        if h.load(Ordering::Acquire) {
            e.store(true, Ordering::Release);
            let _ = r.lock().unwrap().recv();
        }
    }));
    let runtime = EngineRuntime::start(c).expect("valid config");
    let handle = runtime.handle();
    let t = Transfer { account: AccountId(1), asset: AssetId(0), amount: Amount(1), request_id: 0 };
    handle.submit_transfer(0, t).expect("queued");
    while !entered.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    assert_eq!(handle.digest(0).map(|_| ()), Err(SubmitError::Timeout));
    // Let go: the shard answers again.
    held.store(false, Ordering::Release);
    let _ = hold_tx.send(());
    assert!(handle.digest(0).is_ok());
    runtime.shutdown();
}

/// Whatever the idle spin (none, short, longer than the pauses), an engine thread that
/// went idle and parked takes the next command: nothing waits for a later one.
#[test]
fn an_idle_engine_thread_wakes_for_the_next_command_whatever_its_spin() {
    for spin_us in [0, 50, 2_000] {
        let mut cfg = config(1 << 12);
        cfg.idle_spin = Duration::from_micros(spin_us);
        let runtime = EngineRuntime::start(cfg).expect("valid config");
        let handle = runtime.handle();
        let transfer = Transfer {
            account: AccountId(1),
            asset: USD,
            amount: Amount(1_000_000_000_000),
            request_id: 0,
        };
        handle.submit(CommandKind::Transfer(transfer)).expect("queued");
        for n in 1..=3u64 {
            // Idle longer than any spin: the thread has parked by now.
            std::thread::sleep(Duration::from_millis(5));
            let order = NewOrder {
                key: None,
                order_id: handle.allocate_order_id(),
                client_order_id: n,
                account: AccountId(1),
                instrument: MKT,
                side: Side::Buy,
                order_type: OrderType::Limit,
                price: Price(100 + n as i64),
                qty: Qty(1),
                stp: StpMode::CancelResting,
            };
            handle.submit(CommandKind::New(order)).expect("queued");
            let snap = handle.book_snapshot(MKT, 10).expect("answered");
            assert_eq!(snap.bids.len(), n as usize, "spin {spin_us} us, order {n}: {snap:?}");
        }
        runtime.shutdown();
    }
}
