//! The byte paths between processes and from clients: `cargo bench -p benches --bench wire`.
//!
//! - `journal/encode_64`: 64 commands of the synthetic flow framed as journal records
//!   (length, CRC32C, body): the journal stage's work per batch, and the engine node's
//!   per batch it hands to NATS.
//! - `journal/decode_64`: the same bytes checked and decoded, as a gateway node's replica
//!   does with every NATS message (and recovery with every journal batch).
//! - `request/ws_order_new`, `request/ws_subscribe`: a WebSocket text request parsed into
//!   its request (simd-json in place, into a scratch buffer the connection keeps).
//! - `request/rest_order`: a `POST /api/v1/orders` body parsed (simd-json, serde_json
//!   where it refuses).
//!
//! Throughput is per command (journal) and per request.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;

use benches::Workload;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickgate_engine::journal::{decode_records, encode_record};
use tickgate_gateway::rest::parse_json;
use tickgate_gateway::trading::NewOrderRequest;
use tickgate_gateway::ws::control;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Commands per batch: about what a busy journal batch or NATS message holds (the engine
/// node sent about 25 commands a message at 20,000 commands/s; more under load).
const BATCH: usize = 64;

fn journal(c: &mut Criterion) {
    let workload = Workload::mixed(7, 10_000, BATCH);
    let commands = &workload.measured;
    let mut framed = Vec::with_capacity(BATCH * 96);
    for (i, cmd) in commands.iter().enumerate() {
        encode_record(1 + i as u64, cmd, &mut framed);
    }
    let decoded = decode_records(&framed).expect("the batch just encoded decodes");
    assert_eq!(decoded.len(), BATCH);
    assert!(decoded.iter().zip(commands).all(|(r, c)| r.command == *c), "round trip");

    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut out = Vec::with_capacity(framed.len());
    group.bench_function("encode_64", |b| {
        b.iter(|| {
            out.clear();
            for (i, cmd) in black_box(commands).iter().enumerate() {
                encode_record(1 + i as u64, cmd, &mut out);
            }
            out.len()
        })
    });
    group.bench_function("decode_64", |b| {
        b.iter(|| decode_records(black_box(&framed)).map(|records| records.len()))
    });
    group.finish();
}

fn requests(c: &mut Criterion) {
    let order_new = br#"{"op":"order.new","id":5,"symbol":"BTC-USD","side":"buy","type":"limit","price":"65000.00","qty":"0.1000","client_order_id":7,"stp":"cancel_resting"}"#;
    let subscribe = br#"{"op":"subscribe","id":1,"channels":["book.BTC-USD","trades.BTC-USD","bbo.ETH-USD"],"depth":50}"#;
    let rest_order = br#"{"symbol":"BTC-USD","side":"buy","type":"limit","price":"65000.00","qty":"0.0100","client_order_id":7}"#;
    let mut scratch = Vec::with_capacity(256);
    assert!(matches!(
        control::parse(order_new, &mut scratch),
        Ok(control::Request::OrderNew { .. })
    ));
    assert!(matches!(
        control::parse(subscribe, &mut scratch),
        Ok(control::Request::Subscribe { .. })
    ));
    assert!(parse_json::<NewOrderRequest>(rest_order.to_vec()).is_ok());

    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ws_order_new", |b| {
        b.iter(|| control::parse(black_box(order_new), &mut scratch).is_ok())
    });
    group.bench_function("ws_subscribe", |b| {
        b.iter(|| control::parse(black_box(subscribe), &mut scratch).is_ok())
    });
    group.bench_function("rest_order", |b| {
        // The body arrives as a fresh buffer per request, as hyper collects it.
        b.iter(|| parse_json::<NewOrderRequest>(black_box(rest_order).to_vec()).is_ok())
    });
    group.finish();
}

criterion_group!(benches, journal, requests);
criterion_main!(benches);
