//! Starting and stopping the whole system.

use std::future::Future;
use std::time::{Duration, Instant};

use tickgate_engine::runtime::{EngineHandle, EngineRuntime, RuntimeConfig};
use tickgate_engine::types::format_fixed;
use tickgate_engine::{EngineCounters, EngineSpec};
use tickgate_feed::{FeedDriver, FlowConfig};

use crate::config::Config;

/// Accounts the engine tables hold: users, plus the synthetic flow's range.
const ACCOUNTS_MAX: u32 = 4096;

/// Starts the engine (and the feed unless disabled), logs a summary every second, and
/// returns after `shutdown` resolves and everything has stopped.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let spec = EngineSpec {
        accounts_max: ACCOUNTS_MAX,
        ..EngineSpec::default()
    };
    let runtime = EngineRuntime::start(RuntimeConfig {
        spec,
        shards: config.shards,
        queue_capacity: config.queue_capacity,
        ring_capacity: config.ring_capacity,
        ..RuntimeConfig::default()
    })?;
    let handle = runtime.handle();
    tracing::info!(
        shards = config.shards,
        instruments = handle.instruments().len(),
        "engine started"
    );
    let feed = config.feed_rate.map(|rate| {
        tracing::info!(rate, seed = config.seed, "synthetic feed started");
        FeedDriver::start(
            handle.clone(),
            FlowConfig {
                seed: config.seed,
                ..FlowConfig::default()
            },
            rate,
        )
    });

    let summary = summary_loop(handle.clone(), config.summary_symbol.clone());
    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        () = summary => {}
    }
    if let Some(feed) = feed {
        feed.stop();
    }
    let engines = tokio::task::spawn_blocking(move || runtime.shutdown()).await?;
    let commands: u64 = engines.iter().map(|e| e.counters().commands).sum();
    tracing::info!(commands, "engine stopped");
    Ok(())
}

/// One line per second: rates and the top of book of one instrument.
async fn summary_loop(handle: EngineHandle, symbol: String) {
    let instrument = handle.instrument_by_symbol(&symbol).cloned();
    if instrument.is_none() {
        tracing::warn!(%symbol, "summary symbol is not an instrument; showing rates only");
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let (mut last, mut at) = (handle.counters(), Instant::now());
    loop {
        ticker.tick().await;
        let (now, elapsed) = (handle.counters(), at.elapsed().as_secs_f64().max(1e-9));
        let rate = |f: fn(&EngineCounters) -> u64| (f(&now) - f(&last)) as f64 / elapsed;
        let top = match &instrument {
            Some(i) => {
                let h = handle.clone();
                let id = i.id;
                let snap = tokio::task::spawn_blocking(move || h.book_snapshot(id, 1)).await;
                let p = i.spec.price_precision;
                match snap {
                    Ok(Ok(s)) => {
                        let side = |l: Option<&(tickgate_engine::Price, tickgate_engine::Qty)>| {
                            l.map_or_else(|| "-".to_string(), |(px, _)| format_fixed(px.0, p))
                        };
                        format!(
                            "{} {} / {}",
                            i.spec.symbol,
                            side(s.bids.first()),
                            side(s.asks.first())
                        )
                    }
                    _ => "engine stopped".to_string(),
                }
            }
            None => String::new(),
        };
        tracing::info!(
            "commands/s {:>9.0}  trades/s {:>8.0}  events/s {:>9.0}  {}",
            rate(|c| c.commands),
            rate(|c| c.trades),
            rate(|c| c.events),
            top
        );
        (last, at) = (now, Instant::now());
    }
}
