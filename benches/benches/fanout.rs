//! Fan-out hot paths: `cargo bench -p benches --bench fanout`.
//!
//! - `encode/*`: one market-data message, binary and JSON.
//! - `publish/{idle,busy}_subscribers/N`: the hub's producer step (apply to channel state,
//!   encode once, frame, store in the channel ring, wake subscribers) for a pass of 64 book
//!   deltas on one channel with N subscribers. Encoding and storing are per event and do
//!   not depend on N; waking is once per pass per subscriber (idle: a real wake-up; busy:
//!   an atomic swap that finds a wake-up already pending).

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tickgate_engine::{
    default_markets, BookDelta, Engine, EngineSpec, Event, InstrumentId, Price, Qty, Seq, Side,
    UnixNanos,
};
use tickgate_gateway::fanout::{ConnWaker, Directory, Publisher};
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
        let directory = Arc::new(Directory::new(engine.instruments(), 1024));
        let mut publisher = Publisher::new(Arc::clone(&directory), Arc::new(Metrics::default()));
        let channel = Arc::clone(directory.get("book.BTC-USD").expect("channel"));
        let wakers: Vec<Arc<ConnWaker>> = (0..subscribers).map(|_| ConnWaker::new()).collect();
        for w in &wakers {
            black_box(channel.subscribe(w, false, 10));
        }
        let mut seq = 0u64;
        // Idle connections: every subscriber is parked and must be woken (the clear that
        // re-arms them runs untimed, on "their" side).
        group.bench_with_input(
            BenchmarkId::new("idle_subscribers", subscribers),
            &subscribers,
            |b, _| {
                b.iter_batched(
                    || wakers.iter().for_each(|w| w.clear()),
                    |()| {
                        for _ in 0..PASS {
                            seq += 1;
                            publisher.ingest(&Event::BookDelta(delta(seq)));
                        }
                        publisher.publish();
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        // Busy connections: a wake-up is already pending for each, so waking is one atomic
        // swap that finds it set.
        group.bench_with_input(
            BenchmarkId::new("busy_subscribers", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    for _ in 0..PASS {
                        seq += 1;
                        publisher.ingest(&Event::BookDelta(delta(seq)));
                    }
                    publisher.publish();
                })
            },
        );
        assert_eq!(channel.last_seq(), seq, "every delta was applied in order");
    }
    group.finish();
}

criterion_group!(benches, encode, publish);
criterion_main!(benches);
