//! Engine latency per command: `cargo bench -p benches --bench engine_latency`.
//!
//! Two measurements over the synthetic market's command mix, printed as HDR percentiles:
//! 1. **service**: time inside `Engine::process` for one command (events published into
//!    a ring), measured around each call on one thread. Includes ~20 ns of clock reads.
//! 2. **end to end at a fixed offered rate** (default 1,000,000 commands/s): one client
//!    thread submits on a fixed schedule through the real runtime (bounded queue, engine
//!    thread, event ring) and reads the ring between submissions; latency runs from the
//!    scheduled send time to the moment the client reads the command's first report, so
//!    it includes queueing, the engine, the ring and the client's own polling (coordinated
//!    omission is avoided by measuring from the schedule, not from the actual send).
//!
//! Env: `TICKGATE_LATENCY_RATE` (commands/s), `TICKGATE_LATENCY_SECONDS`,
//! `TICKGATE_RING_CAPACITY` (events), `TICKGATE_CLIENT_SLEEP_US`,
//! `TICKGATE_IDLE_SPIN_US` (how long the engine thread spins before parking).
//!
//! Durability: `TICKGATE_DURABILITY=fsync|batch-async|none` runs the end-to-end part with
//! the journal in front of the engine (in `TICKGATE_DATA_DIR`, default
//! `target/bench-journal` of the workspace, emptied first), so latency is acknowledgement latency (the
//! report is only produced after the command's batch is synced); it then reports the
//! journal's batches and syncs, and times recovery of the whole journal in a fresh
//! runtime (records replayed per second).

use std::time::{Duration, Instant};

use benches::Workload;
use hdrhistogram::Histogram;
use tickgate_engine::runtime::{EngineRuntime, RuntimeConfig, SubmitError};
use tickgate_engine::{CommandKind, Event, EventRing};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn print(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<28} n={:>9}  p50={:>7} ns  p90={:>7} ns  p99={:>7} ns  p99.9={:>8} ns  max={:>9} ns",
        h.len(),
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.90),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn service_time(workload: &Workload) {
    let mut engine = workload.engine();
    let (_ring, mut writer) = EventRing::with_capacity(1 << 16);
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("valid bounds");
    for cmd in &workload.measured {
        let start = Instant::now();
        engine.process(cmd, &mut writer);
        writer.publish();
        h.saturating_record(start.elapsed().as_nanos() as u64);
    }
    print("service (1 thread)", &h);
}

/// Marks client order ids of measured orders (warm-up orders carry small ids).
const TAG: u64 = 1 << 40;

fn end_to_end(workload: &Workload, rate: u64, seconds: u64) {
    let durability = durability();
    let config = RuntimeConfig {
        spec: workload.spec.clone(),
        ring_capacity: env("TICKGATE_RING_CAPACITY", 1 << 16) as usize,
        idle_spin: Duration::from_micros(env("TICKGATE_IDLE_SPIN_US", 50)),
        durability: durability.clone(),
        ..RuntimeConfig::default()
    };
    let runtime = EngineRuntime::start(config.clone()).expect("valid spec");
    let handle = runtime.handle();
    let mut reader = handle.reader(0).expect("shard 0");
    let mut events = Vec::with_capacity(4096);
    for cmd in &workload.setup {
        while handle.submit(cmd.kind) == Err(SubmitError::QueueFull) {
            std::thread::yield_now();
        }
    }
    handle.digest(0).expect("engine running"); // wait for the setup to be applied
    reader.read(&mut events, usize::MAX);
    events.clear();

    let total = ((rate * seconds) as usize).min(workload.measured.len());
    let interval_ns = 1e9 / rate as f64;
    // The client order id of each measured command is TAG + its index: match reports by it.
    let mut scheduled = vec![0u64; total];
    let mut seen = vec![false; total];
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    let (mut sent, mut answered, mut missed) = (0usize, 0usize, 0u64);
    let client_sleep = Duration::from_micros(env("TICKGATE_CLIENT_SLEEP_US", 0));
    let start = Instant::now();
    let deadline = Duration::from_secs(seconds + 10);
    while answered < total && start.elapsed() < deadline {
        let now = start.elapsed().as_nanos() as u64;
        while sent < total && (sent as f64 * interval_ns) as u64 <= now {
            let kind = match workload.measured[sent].kind {
                CommandKind::New(mut o) => {
                    o.client_order_id = TAG + sent as u64;
                    CommandKind::New(o)
                }
                other => other,
            };
            match handle.submit(kind) {
                Ok(()) => {
                    scheduled[sent] = (sent as f64 * interval_ns) as u64;
                    if !matches!(kind, CommandKind::New(_)) {
                        // Cancels/replaces echo no client id: count them answered, untimed.
                        seen[sent] = true;
                        answered += 1;
                    }
                    sent += 1;
                }
                Err(SubmitError::QueueFull) => break,
                Err(e) => panic!("engine stopped: {e}"),
            }
        }
        events.clear();
        let outcome = reader.read(&mut events, 4096);
        missed += outcome.missed;
        if outcome.read == 0 && client_sleep > Duration::ZERO {
            // Leave the core to the engine and the OS instead of spinning on it.
            std::thread::sleep(client_sleep);
        }
        let read_at = start.elapsed().as_nanos() as u64;
        for e in &events {
            if let Event::Exec(r) = e {
                let Some(i) = r.client_order_id.checked_sub(TAG).map(|i| i as usize) else {
                    continue; // an order from the warm-up
                };
                if i < total && !seen[i] {
                    seen[i] = true;
                    answered += 1;
                    h.saturating_record(read_at.saturating_sub(scheduled[i]).max(1));
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    print(&format!("end to end @ {rate}/s"), &h);
    println!(
        "{:<28} offered {rate}/s, achieved {:.0}/s over {elapsed:.2}s, {answered}/{total} answered, ring misses {missed}",
        "",
        sent as f64 / elapsed
    );
    if let Some(stats) = handle.journal_stats(0) {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let (records, batches, syncs) =
            (get(&stats.records), get(&stats.batches), get(&stats.syncs));
        println!(
            "{:<28} journal: {records} records in {batches} batches ({:.0} per batch), {syncs} syncs, {:.1} MB",
            "",
            records as f64 / batches.max(1) as f64,
            get(&stats.bytes) as f64 / 1e6
        );
    }
    runtime.shutdown();
    if durability.is_some() {
        let start = Instant::now();
        let recovered = EngineRuntime::start(config).expect("recovers");
        let elapsed = start.elapsed().as_secs_f64();
        let replayed = recovered.recoveries()[0].replayed;
        println!(
            "{:<28} recovery: {replayed} records in {elapsed:.3} s = {:.0} records/s (start-up included)",
            "",
            replayed as f64 / elapsed
        );
        recovered.shutdown();
    }
}

/// The journal configuration `TICKGATE_DURABILITY` asks for, in a fresh directory.
fn durability() -> Option<tickgate_engine::durable::DurabilityConfig> {
    use tickgate_engine::journal::SyncMode;
    let mode = match std::env::var("TICKGATE_DURABILITY").ok()?.as_str() {
        "fsync" => SyncMode::Fsync,
        "batch-async" => SyncMode::BatchAsync(Duration::from_millis(10)),
        "none" => SyncMode::None,
        other => panic!("TICKGATE_DURABILITY={other}: expected fsync, batch-async or none"),
    };
    // Under the workspace's target directory, whatever directory cargo runs the bench in.
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-journal");
    let dir = std::env::var("TICKGATE_DATA_DIR").unwrap_or_else(|_| default.into());
    let _ = std::fs::remove_dir_all(&dir);
    let mut d = tickgate_engine::durable::DurabilityConfig::new(dir);
    d.mode = mode;
    d.snapshot_every = 0;
    println!("durability: {mode} in {}", d.dir.display());
    Some(d)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) is a
    // smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (rate, seconds) = if smoke {
        (100_000, 1)
    } else {
        (env("TICKGATE_LATENCY_RATE", 1_000_000), env("TICKGATE_LATENCY_SECONDS", 5))
    };
    let measured = (rate * seconds) as usize;
    let workload = Workload::mixed(42, 200_000, measured.max(100_000));
    service_time(&workload);
    end_to_end(&workload, rate, seconds);
}
