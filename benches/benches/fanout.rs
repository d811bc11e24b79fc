//! Fan-out hot paths: `cargo bench -p benches --bench fanout`.
//!
//! - `encode/*`: one market-data message, binary and JSON.
//! - `publish/subscribers/N`: the hub's producer step for a pass of 64 book deltas on one
//!   channel with N subscribers: apply to the channel state, encode once, frame, store in
//!   the channel ring, then wake the writer threads (two, as on a 2-core machine). The hub
//!   never touches a subscriber, so the time must not depend on N.
//! - `writer_round/sockets/N`: a writer's round over N real loopback connections that each
//!   follow the channel: for every connection, collect the pass's chunk after its cursor,
//!   frame it and write it with one non-blocking `writev` (what a writer thread does per
//!   connection). The clients' reads happen outside the timed part.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickgate_engine::{
    default_markets, BookDelta, Engine, EngineSpec, Event, InstrumentId, Price, Qty, Seq, Side,
    UnixNanos,
};
use tickgate_gateway::fanout::link::{Link, LinkConfig, Tally};
use tickgate_gateway::fanout::outbox::Sub;
use tickgate_gateway::fanout::{ChunkCache, Directory, Publisher, RestPolicy, Writers};
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

/// The default markets' channels, with a publisher into them.
fn fixture() -> (Arc<Directory>, Arc<Metrics>, Publisher) {
    let engine = Engine::new(&EngineSpec::default(), |_| true).expect("default markets");
    let candles = Arc::new(
        tickgate_gateway::candles::Candles::new(engine.instruments().len(), None).expect("no file"),
    );
    let directory = Arc::new(Directory::new(engine.instruments(), 1024, &candles));
    let metrics = Arc::new(Metrics::default());
    let clock = tickgate_engine::WallClock::shared();
    let publisher = Publisher::new(Arc::clone(&directory), Arc::clone(&metrics), clock);
    (directory, metrics, publisher)
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
    // 0: a channel nobody follows (its state follows the events, nothing is encoded).
    for subscribers in [0usize, 1, 100, 10_000] {
        let (directory, metrics, mut publisher) = fixture();
        let writers = Writers::start(Arc::clone(&directory), metrics, 2, RestPolicy::Fixed(0));
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

/// N loopback connections: the server side as links following `channel`, the client side
/// as non-blocking std sockets to drain.
fn connections(
    runtime: &tokio::runtime::Runtime,
    n: usize,
    channel: &Arc<tickgate_gateway::fanout::Channel>,
    config: &Arc<LinkConfig>,
) -> (Vec<Arc<Link>>, Vec<std::net::TcpStream>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let (mut links, mut clients) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.set_nonblocking(true).expect("non-blocking");
        server.set_nonblocking(true).expect("non-blocking");
        let stream = tokio::net::TcpStream::from_std(server).expect("inside the runtime");
        let link = Link::new(
            stream,
            tickgate_gateway::protocol::Format::Binary,
            std::time::Duration::ZERO,
            None,
            Arc::clone(config),
        );
        // Tokio writes only to a socket its reactor has seen writable: let it see it once
        // (the sockets are drained every round, so they never fill).
        runtime.block_on(link.stream.writable()).expect("writable");
        let start = channel.subscribe(false, 10);
        link.lock().subs.push(Sub {
            channel: Arc::clone(channel),
            cursor: start.cursor,
            depth: 10,
            last_seq: start.seq,
            last_sent: std::time::Instant::now(),
        });
        links.push(link);
        clients.push(client);
    }
    (links, clients)
}

/// Reads whatever each client has received.
fn drain(clients: &mut [std::net::TcpStream], buf: &mut [u8]) {
    use std::io::Read;
    for c in clients {
        while matches!(c.read(buf), Ok(n) if n > 0) {}
    }
}

fn writer_round(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("rt");
    let _inside = runtime.enter();
    let mut group = c.benchmark_group("writer_round");
    group.sample_size(20);
    // One hub pass per round, and eight: a writer whose round outlasts the passes collects
    // several chunks of each channel per visit (at 10,000 subscribers, dozens).
    for (n, passes) in [(100usize, 1), (1_000, 1), (1_000, 8)] {
        group.throughput(Throughput::Elements(n as u64));
        let (directory, metrics, mut publisher) = fixture();
        let config = Arc::new(LinkConfig {
            metrics: Arc::clone(&metrics),
            write_batch_bytes_max: 256 * 1024,
            slow_gaps_max: usize::MAX,
            slow_gap_window: std::time::Duration::from_secs(60),
            // The bench reads every socket after each round: no receipts needed.
            unread_bytes_max: u64::MAX,
            unread_bytes_start: u64::MAX,
            allowances: tickgate_gateway::fanout::outbox::AllowancePool::new(0),
            held_max: std::time::Duration::MAX,
            clock: tickgate_engine::WallClock::shared(),
        });
        let channel = Arc::clone(directory.get("book.BTC-USD").expect("channel"));
        let (links, mut clients) = connections(&runtime, n, &channel, &config);
        let mut buf = vec![0u8; 64 * 1024];
        let mut tally = Tally::default();
        let mut cache = ChunkCache::default();
        let mut seq = 0u64;
        let name =
            if passes == 1 { "sockets".to_string() } else { format!("sockets_{passes}_passes") };
        group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut timed = std::time::Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..passes {
                        for _ in 0..PASS {
                            seq += 1;
                            publisher.ingest(&Event::BookDelta(delta(seq)));
                        }
                        publisher.publish();
                    }
                    let started = std::time::Instant::now();
                    for link in &links {
                        black_box(link.visit(&mut tally, &mut cache));
                    }
                    timed += started.elapsed();
                    drain(&mut clients, &mut buf);
                }
                timed
            })
        });
        tally.publish(&metrics);
        let sent = metrics.ws_messages_sent_total.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent >= seq * n as u64 / 2, "the rounds wrote the deltas: {sent}");
    }
    group.finish();
}

criterion_group!(benches, encode, publish, writer_round);
criterion_main!(benches);
