//! What start-up rebuilds from disk: users' order history, candles, demo funding.

use std::sync::Arc;
use std::time::Duration;

use tickgate_engine::runtime::{EngineHandle, EngineRuntime};
use tickgate_engine::{AccountId, EngineSpec};
use tickgate_feed::Worker;

use crate::auth::Users;
use crate::config::Config;
use crate::history;
use crate::orders::OrderStore;

/// Accounts the engine tables hold: users, plus the synthetic flow's range.
const ACCOUNTS_MAX: u32 = 4096;

/// What [`restore_history`] starts from.
pub(super) struct HistoryRestore<'a> {
    /// The history file's records.
    pub(super) loaded: history::Loaded,
    /// Users' reports the journal's replay brought back.
    pub(super) replayed: &'a std::sync::Mutex<Vec<tickgate_engine::ExecReport>>,
    /// The history directory.
    pub(super) dir: std::path::PathBuf,
    /// The history's retention watermark, set to the recovered journal's end.
    pub(super) mark: tickgate_engine::Watermark,
}

/// Rebuilds users' orders and fills: the history file's records the recovered engine
/// knows of, then the journal's replayed reports past them; rewrites the file compactly
/// and starts the thread that syncs it.
pub(super) async fn restore_history(
    engine: &EngineHandle,
    users: &Users,
    orders: &Arc<OrderStore>,
    restore: HistoryRestore<'_>,
) -> anyhow::Result<Worker> {
    let HistoryRestore { loaded, replayed, dir, mark } = restore;
    if loaded.torn_bytes > 0 {
        tracing::warn!(
            "torn order history tail cut: {} bytes at the end of {}",
            loaded.torn_bytes,
            dir.join(history::FILE).display()
        );
    }
    // A record past the engine's last report sequence for its account describes a command
    // the journal lost (a `batch-async` or `none` loss window, or a removed journal): the
    // order never happened as far as the engine knows, so neither does its history.
    let accounts: Vec<AccountId> = users.all().map(|u| u.account).collect();
    let mut known = std::collections::HashMap::new();
    for shard in 0..engine.shards() {
        let (e, a) = (engine.clone(), accounts.clone());
        let seqs = tokio::task::spawn_blocking(move || e.exec_seqs(shard, a)).await??;
        for (account, seq) in accounts.iter().zip(seqs) {
            known.insert((*account, shard), seq.map_or(0, |s| s.0));
        }
    }
    let total = loaded.entries.len();
    let kept: Vec<_> = loaded
        .entries
        .into_iter()
        .filter(|e| {
            let r = e.report();
            engine
                .shard_of(r.instrument)
                .and_then(|shard| known.get(&(r.account, shard)))
                .is_some_and(|last| r.seq.0 <= *last)
        })
        .collect();
    if kept.len() < total {
        tracing::warn!(
            dropped = total - kept.len(),
            "order history records past the recovered journal dropped"
        );
    }
    orders.load(&kept);
    let replayed = std::mem::take(&mut *replayed.lock().unwrap_or_else(|e| e.into_inner()));
    for r in &replayed {
        // Nobody waits for an answer before the server starts.
        let _ = orders.apply(r);
    }
    tracing::info!(records = kept.len(), replayed = replayed.len(), "order history restored");
    let o = Arc::clone(orders);
    let d = dir.clone();
    let writer =
        tokio::task::spawn_blocking(move || history::HistoryWriter::create(&d, o.dump())).await??;
    orders.attach_history(writer);
    orders.attach_watermark(mark, dir);
    let o = Arc::clone(orders);
    tokio::task::spawn_blocking(move || o.sync_history()).await?;
    let o = Arc::clone(orders);
    Ok(Worker::spawn("history-sync", move |stop| {
        let mut last = std::time::Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                o.sync_history();
                last = std::time::Instant::now();
            }
        }
    }))
}

/// Writes the candles to disk every [`crate::candles::SAVE_EVERY`].
pub(super) fn candles_saver(candles: Arc<crate::candles::Candles>) -> Worker {
    Worker::spawn("candles-save", move |stop| {
        let mut last = std::time::Instant::now();
        let mut failed = false;
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= crate::candles::SAVE_EVERY {
                last = std::time::Instant::now();
                match candles.save() {
                    Ok(()) => failed = false,
                    Err(e) => {
                        if !failed {
                            tracing::error!("candles not saved: {e} (retrying every save)");
                        }
                        failed = true;
                    }
                }
            }
        }
    })
}

/// The engine's tables: the default markets, users' accounts and the synthetic flow's.
pub fn engine_spec() -> EngineSpec {
    EngineSpec { accounts_max: ACCOUNTS_MAX, ..EngineSpec::default() }
}

/// Logs the durability mode and what recovery did; `true` when every shard started empty
/// (a first run, or no journal), so accounts need their initial funding.
pub(super) fn log_recovery(config: &Config, runtime: &EngineRuntime) -> bool {
    let Some(d) = &config.durability else {
        tracing::warn!("durability off: state is in memory only and dies with the process");
        return true;
    };
    tracing::info!(mode = %d.mode, dir = %d.dir.display(), snapshot_every = d.snapshot_every, "journal");
    for r in runtime.recoveries() {
        for skipped in &r.skipped_snapshots {
            tracing::warn!(shard = r.shard, "snapshot passed over: {skipped}");
        }
        if let Some(warning) = &r.retention_warning {
            tracing::warn!(shard = r.shard, "{warning}");
        }
        if let Some((path, bytes, written)) = &r.torn {
            tracing::warn!(
                shard = r.shard,
                "torn journal tail cut at the end of {}: an unfinished write of {written} \
                 bytes (never acknowledged), with the {} zeroed bytes prepared after it",
                path.display(),
                bytes - written
            );
        }
        let rate = r.replayed as f64 / r.elapsed.as_secs_f64().max(1e-9);
        tracing::info!(
            shard = r.shard,
            snapshot = ?r.snapshot.as_ref().map(|(_, seq)| seq),
            replayed = r.replayed,
            next_seq = r.next_seq,
            elapsed_ms = r.elapsed.as_secs_f64() * 1e3,
            records_per_sec = rate as u64,
            "recovered"
        );
    }
    runtime.recoveries().iter().all(|r| r.is_fresh())
}

/// Demo balances for every user's account on every shard: 1,000,000 of the quote asset
/// and 1,000 of every other asset, so a fresh server can be traded on at once. A full
/// queue (a small `--queue-capacity`, the feed already running) is waited out: funding
/// happens on the first start only, so a transfer dropped here would never come.
pub(super) async fn fund_demo_accounts(engine: &EngineHandle, users: &Users) -> anyhow::Result<()> {
    use tickgate_engine::{Amount, AssetId, Transfer};
    for user in users.all() {
        for shard in 0..engine.shards() {
            for (i, asset) in engine.assets().iter().enumerate() {
                let units = if i == 0 { 1_000_000 } else { 1_000 };
                let amount = Amount(10i64.pow(u32::from(asset.precision)) * units);
                let t = Transfer {
                    account: user.account,
                    asset: AssetId(i as u16),
                    amount,
                    request_id: 0,
                };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    match engine.submit_transfer(shard, t) {
                        Ok(()) => break,
                        Err(tickgate_engine::runtime::SubmitError::QueueFull)
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(e) => {
                            anyhow::bail!("demo funding of {} not queued: {e}", user.username)
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
