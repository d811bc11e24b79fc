//! Fan-out hot paths: `cargo bench -p benches --bench fanout`.
//!
//! - `encode/*`: one market-data message, binary and JSON.
//! - `publish/subscribers/N`: the hub's producer step for a pass of 64 book deltas on one
//!   channel with N subscribers: apply to the channel state, encode once, frame, store in
//!   the channel ring, then wake the writer threads (two, as on a 2-core machine). The hub
//!   never touches a subscriber, so the time must not depend on N.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickgate_engine::{
    default_markets, BookDelta, Engine, EngineSpec, Event, InstrumentId, Price, Qty, Seq, Side,
    UnixNanos,
};
use tickgate_gateway::fanout::{Directory, Publisher, Writers};
use tickgate_gateway::metrics::Metrics;
use tickgate_gateway::protocol::{bin, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PASS: u64 = 64;

fn delta(seq: u64) -> BookDelta {
    BookDelta {
        instrument: InstrumentId(0),
        seq: Seq(seq),
        ts: UnixNanos(1_700_000_000_000_000_000 + seq),
        side: if seq.is_multiple_of(2) { Side::Buy } else { Side::Sell },
        price: Price(6_500_000 + (seq % 100) as i64),
        qty: Qty(if seq.is_multiple_of(3) { 0 } else { (seq % 50) as i64 + 1 }),
    }
}

fn encode(c: &mut Criterion) {
    let (assets, specs) = default_markets();
    let engine =
        Engine::new(&EngineSpec { assets, instruments: specs, ..EngineSpec::default() }, |_| true)
            .expect("default markets");
    let btc = engine.instruments()[0].clone();
    let d = delta(12_345);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1 << 16);
    group.bench_function("binary_book_delta", |b| {
        b.iter(|| {
            if out.len() > 60_000 {
                out.clear();
            }
            bin::book_delta(&mut out, 1, d.seq.0, d.ts.0, d.side, d.price, d.qty);
        })
    });
    let mut text = String::with_capacity(1 << 16);
    group.bench_function("json_book_delta", |b| {
        b.iter(|| {
            if text.len() > 60_000 {
                text.clear();
            }
            json::book_delta(
                &mut text,
                &btc,
                "book.BTC-USD",
                d.seq.0,
                d.ts.0,
                d.side,
                d.price,
                d.qty,
            );
        })
    });
    group.finish();
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(PASS));
    for subscribers in [1usize, 100, 10_000] {
        let engine = Engine::new(&EngineSpec::default(), |_| true).expect("default markets");
        let candles = Arc::new(
            tickgate_gateway::candles::Candles::new(engine.instruments().len(), None)
                .expect("no file"),
        );
        let directory = Arc::new(Directory::new(engine.instruments(), 1024, &candles));
        let metrics = Arc::new(Metrics::default());
        let mut publisher = Publisher::new(
            Arc::clone(&directory),
            Arc::clone(&metrics),
            tickgate_engine::WallClock::shared(),
        );
        let writers = Writers::start(Arc::clone(&directory), metrics, 2);
        let channel = Arc::clone(directory.get("book.BTC-USD").expect("channel"));
        for _ in 0..subscribers {
            black_box(channel.subscribe(false, 10));
        }
        assert_eq!(channel.subscribers(), subscribers);
        let mut seq = 0u64;
        group.bench_with_input(
            BenchmarkId::new("subscribers", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    for _ in 0..PASS {
                        seq += 1;
                        publisher.ingest(&Event::BookDelta(delta(seq)));
                    }
                    publisher.publish();
                    if publisher.take_published() {
                        writers.wake();
                    }
                })
            },
        );
        assert_eq!(channel.last_seq(), seq, "every delta was applied in order");
        writers.stop();
    }
    group.finish();
}

criterion_group!(benches, encode, publish);
criterion_main!(benches);
