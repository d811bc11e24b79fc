//! Mixed-flow cost split: the same commands into a ring, a Vec, and a sink that drops
//! events, and per command kind. `cargo run --release -p benches --example sink_probe`
//! (`RING=<slots>` sets the ring size).

use std::time::Instant;

use benches::Workload;
use tickgate_engine::{Event, EventRing, EventSink};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct DropSink(u64);
impl EventSink for DropSink {
    fn push(&mut self, e: Event) {
        self.0 += e.ts().0 & 1;
    }
}

fn main() {
    let w = Workload::mixed(42, 200_000, 2_000_000);
    for round in 0..3 {
        let mut e = w.engine();
        let cap = std::env::var("RING").ok().and_then(|v| v.parse().ok()).unwrap_or(1usize << 16);
        let (_r, mut ring) = EventRing::with_capacity(cap);
        let t = Instant::now();
        for (i, c) in w.measured.iter().enumerate() {
            e.process(c, &mut ring);
            if i % 256 == 0 {
                ring.publish();
            }
        }
        let ring_ns = t.elapsed().as_nanos() as f64 / w.measured.len() as f64;
        let events = ring.written() as f64 / w.measured.len() as f64;
        let mut e = w.engine();
        let mut sink = DropSink(0);
        let t = Instant::now();
        for c in &w.measured {
            e.process(c, &mut sink);
        }
        let drop_ns = t.elapsed().as_nanos() as f64 / w.measured.len() as f64;
        // Per kind, timed one by one (includes ~20-40 ns of clock reads each).
        let mut e = w.engine();
        let mut sink = DropSink(0);
        let mut per: std::collections::BTreeMap<&str, (u64, u128)> = Default::default();
        for c in &w.measured {
            let kind = match &c.kind {
                tickgate_engine::CommandKind::New(o) => match o.order_type {
                    tickgate_engine::OrderType::Limit | tickgate_engine::OrderType::PostOnly => {
                        "new passive"
                    }
                    _ => "new taker",
                },
                tickgate_engine::CommandKind::Cancel(_) => "cancel",
                tickgate_engine::CommandKind::Replace(_) => "replace",
                tickgate_engine::CommandKind::Transfer(_) => "transfer",
                tickgate_engine::CommandKind::Status(_) => "status",
            };
            let t = Instant::now();
            e.process(c, &mut sink);
            let d = t.elapsed().as_nanos();
            let x = per.entry(kind).or_default();
            x.0 += 1;
            x.1 += d;
        }
        for (k, (n, t)) in &per {
            println!(
                "  {k:<12} {n:>8} x {:>6.1} ns = {:>5.1} ns/cmd share",
                *t as f64 / *n as f64,
                *t as f64 / w.measured.len() as f64
            );
        }
        println!("round {round}: ring {ring_ns:.1} ns/cmd, no sink {drop_ns:.1} ns/cmd, {events:.2} events/cmd ({})", sink.0);
    }
}
