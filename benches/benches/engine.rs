//! Engine throughput: `cargo bench -p benches --bench engine`.
//!
//! - `engine/mixed_flow`: the synthetic market's command mix through one engine thread,
//!   events published into an event ring as in production.
//! - `engine/add`, `engine/cancel`, `engine/match`: one kind of command each, against a
//!   populated book.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::time::{Duration, Instant};

use benches::Workload;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickgate_engine::{
    AccountId, Amount, AssetId, CancelOrder, Command, CommandKind, Engine, EngineSpec, EventRing,
    InstrumentId, NewOrder, OrderId, OrderType, Price, Qty, Side, StpMode, Transfer, UnixNanos,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MEASURED: usize = 2_000_000;
const PUBLISH_EVERY: usize = 256;

fn mixed_flow(c: &mut Criterion) {
    let workload = Workload::mixed(42, 200_000, MEASURED);
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("mixed_flow", |b| {
        let (_ring, mut writer) = EventRing::with_capacity(1 << 16);
        let mut engine = workload.engine();
        let mut cursor = 0usize;
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                if cursor == workload.measured.len() {
                    engine = workload.engine(); // untimed: start the stream over
                    cursor = 0;
                }
                let n = left.min(workload.measured.len() - cursor);
                let chunk = &workload.measured[cursor..cursor + n];
                let start = Instant::now();
                for (i, cmd) in chunk.iter().enumerate() {
                    engine.process(cmd, &mut writer);
                    if i % PUBLISH_EVERY == 0 {
                        writer.publish();
                    }
                }
                writer.publish();
                elapsed += start.elapsed();
                cursor += n;
                left -= n;
            }
            elapsed
        });
    });
    group.finish();
}

const MKT: InstrumentId = InstrumentId(0);

fn populated() -> (Engine, u64) {
    let spec = EngineSpec { accounts_max: 8, ..EngineSpec::default() };
    let mut engine = Engine::new(&spec, |_| true).expect("valid");
    let mut sink = Vec::new();
    for account in 0..8 {
        for asset in 0..spec.assets.len() {
            let t = Transfer {
                account: AccountId(account),
                asset: AssetId(asset as u16),
                amount: Amount(1 << 60),
                request_id: 0,
            };
            engine
                .process(&Command { ts: UnixNanos(0), kind: CommandKind::Transfer(t) }, &mut sink);
        }
    }
    // 10,000 resting orders over 200 levels a side around 65000.00.
    let mut id = 0u64;
    for i in 0..10_000i64 {
        id += 1;
        let side = if i % 2 == 0 { Side::Buy } else { Side::Sell };
        let offset = 1 + (i / 2) % 200;
        let price = if side == Side::Buy { 6_500_000 - offset } else { 6_500_000 + offset };
        engine.process(&new(id, (i % 4) as u32, side, OrderType::Limit, price, 10), &mut sink);
    }
    (engine, id)
}

fn new(id: u64, account: u32, side: Side, order_type: OrderType, price: i64, qty: i64) -> Command {
    Command {
        ts: UnixNanos(id),
        kind: CommandKind::New(NewOrder {
            key: None,
            order_id: OrderId(id),
            client_order_id: id,
            account: AccountId(account),
            instrument: MKT,
            side,
            order_type,
            price: Price(price),
            qty: Qty(qty),
            stp: StpMode::None,
        }),
    }
}

fn cancel(id: u64, account: u32) -> Command {
    Command {
        ts: UnixNanos(id),
        kind: CommandKind::Cancel(CancelOrder {
            order_id: OrderId(id),
            account: AccountId(account),
            instrument: MKT,
        }),
    }
}

type Step<'a> = &'a mut dyn FnMut(&mut Engine, u64, &mut Vec<tickgate_engine::Event>);

/// Times `timed` over batches of `BATCH` ids; `prepare` runs (untimed) before each batch
/// and `restore` after it, so every batch sees the same populated book.
fn batched(b: &mut criterion::Bencher<'_>, prepare: Step<'_>, timed: Step<'_>, restore: Step<'_>) {
    const BATCH: u64 = 1_000;
    let (mut engine, first_id) = populated();
    let mut next_id = first_id + 1;
    let mut sink = Vec::with_capacity(16_384);
    b.iter_custom(|iters| {
        let mut elapsed = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let n = BATCH.min(iters - done);
            let ids = next_id..next_id + n;
            for id in ids.clone() {
                prepare(&mut engine, id, &mut sink);
            }
            sink.clear();
            let start = Instant::now();
            for id in ids.clone() {
                timed(&mut engine, id, &mut sink);
            }
            elapsed += start.elapsed();
            sink.clear();
            for id in ids {
                restore(&mut engine, id, &mut sink);
            }
            sink.clear();
            next_id += 2 * n;
            done += n;
        }
        elapsed
    });
}

fn nothing(_: &mut Engine, _: u64, _: &mut Vec<tickgate_engine::Event>) {}

fn single_commands(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let near_bid = |id: u64| 6_500_000 - 1 - (id % 8) as i64;
    // Add: a passive limit order near the top (a new level or an existing one).
    group.bench_function("add", |b| {
        batched(
            b,
            &mut nothing,
            &mut |e, id, sink| {
                e.process(&new(id, 5, Side::Buy, OrderType::Limit, near_bid(id), 1), sink)
            },
            &mut |e, id, sink| e.process(&cancel(id, 5), sink),
        )
    });
    // Cancel: of an order added (untimed) just before the batch.
    group.bench_function("cancel", |b| {
        batched(
            b,
            &mut |e, id, sink| {
                e.process(&new(id, 5, Side::Buy, OrderType::Limit, near_bid(id), 1), sink)
            },
            &mut |e, id, sink| e.process(&cancel(id, 5), sink),
            &mut nothing,
        )
    });
    // Match: an IOC that takes one resting order (trade, two fills, delta, bbo).
    group.bench_function("match", |b| {
        batched(
            b,
            &mut |e, id, sink| {
                e.process(&new(id + 1, 7, Side::Sell, OrderType::Limit, 6_500_000, 1), sink)
            },
            &mut |e, id, sink| {
                e.process(
                    &new(id + 1_000_000_000, 6, Side::Buy, OrderType::Ioc, 6_500_000, 1),
                    sink,
                )
            },
            &mut nothing,
        )
    });
    group.finish();
}

criterion_group!(benches, mixed_flow, single_commands);
criterion_main!(benches);
