//! The users' order store on the hub thread: `cargo bench -p benches --bench orders`.
//!
//! - `apply/open_kept/N`: one order's life (accepted, then canceled: two execution
//!   reports) for an account that already keeps the store's limit of orders, N of them
//!   open (a market maker's resting quotes) and the rest closed. Each report past the
//!   limit forgets the oldest closed order: the time must not grow with N.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickgate_engine::{
    AccountId, ExecKind, ExecReport, InstrumentId, OrderId, OrderType, Price, Qty, Seq, Side,
    UnixNanos,
};
use tickgate_gateway::orders::{OrderStore, ORDERS_KEPT};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn report(kind: ExecKind, order: u64, seq: u64) -> ExecReport {
    ExecReport {
        account: AccountId(1),
        seq: Seq(seq),
        ts: UnixNanos(seq),
        kind,
        reason: None,
        instrument: InstrumentId(0),
        order_id: OrderId(order),
        client_order_id: 0,
        side: Side::Buy,
        order_type: OrderType::Limit,
        price: Price(10),
        last_price: Price(0),
        last_qty: Qty(0),
        leaves_qty: Qty(5),
        cum_qty: Qty(0),
    }
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(2));
    for open in [0u64, 1_000, 9_000] {
        let store = OrderStore::new([AccountId(1)]);
        let mut seq = 0;
        // The oldest `open` orders stay open; the store is filled up with closed ones.
        for id in 1..=ORDERS_KEPT as u64 {
            seq += 1;
            let _ = store.apply(&report(ExecKind::Accepted, id, seq));
            if id > open {
                seq += 1;
                let _ = store.apply(&report(ExecKind::Canceled, id, seq));
            }
        }
        let mut next = ORDERS_KEPT as u64;
        group.bench_with_input(BenchmarkId::new("open_kept", open), &open, |b, _| {
            b.iter(|| {
                next += 1;
                seq += 2;
                black_box(store.apply(&report(ExecKind::Accepted, next, seq - 1)));
                black_box(store.apply(&report(ExecKind::Canceled, next, seq)));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
