//! Runs a [`SyntheticFlow`] against a live engine at a fixed rate, on its own thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickgate_engine::runtime::{EngineHandle, SubmitError};
use tickgate_engine::{AccountId, CancelOrder, CommandKind};

use crate::synthetic::{FlowConfig, OrderIds, SyntheticFlow};
use crate::worker::Worker;

/// Counters of a running feed.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Commands queued on the engine.
    pub submitted: AtomicU64,
    /// Times the engine's queue was full and the feed had to wait.
    pub backpressure: AtomicU64,
}

/// A running feed thread. Stops when dropped or on [`FeedDriver::stop`].
#[derive(Debug)]
pub struct FeedDriver {
    stats: Arc<FeedStats>,
    worker: Worker,
}

/// Ids reserved from the engine in blocks, so the feed touches the shared counter rarely.
struct BlockIds {
    handle: EngineHandle,
    next: u64,
    end: u64,
}

impl OrderIds for BlockIds {
    fn next_order_id(&mut self) -> tickgate_engine::OrderId {
        if self.next == self.end {
            let block = self.handle.reserve_order_ids(65_536);
            self.next = block.start;
            self.end = block.end;
        }
        self.next += 1;
        tickgate_engine::OrderId(self.next - 1)
    }
}

/// Pacing granularity: the feed wakes this often and submits what the rate allows.
const TICK: Duration = Duration::from_millis(1);
/// How far behind schedule the feed may fall before it forgets the backlog.
const BACKLOG_MAX: Duration = Duration::from_millis(100);

impl FeedDriver {
    /// Funds the flow's accounts on every shard, then submits `rate_per_sec` commands per
    /// second (0: as fast as the engine takes them) until stopped.
    pub fn start(handle: EngineHandle, config: FlowConfig, rate_per_sec: u64) -> FeedDriver {
        Self::spawn(handle, config, rate_per_sec, true)
    }

    /// Like [`FeedDriver::start`] for an engine recovered from a journal: funds only the
    /// flow's accounts the journal does not know (a first run without the feed never
    /// funded them; funding them again would double their money on every restart), and
    /// first cancels the flow's orders still resting from the previous run (a new flow does
    /// not know them, so they would stay for good, holding funds and book capacity).
    pub fn resume(handle: EngineHandle, config: FlowConfig, rate_per_sec: u64) -> FeedDriver {
        Self::spawn(handle, config, rate_per_sec, false)
    }

    fn spawn(
        handle: EngineHandle,
        config: FlowConfig,
        rate_per_sec: u64,
        fund: bool,
    ) -> FeedDriver {
        let stats = Arc::new(FeedStats::default());
        let st = Arc::clone(&stats);
        let worker =
            Worker::spawn("feed", move |stop| run(handle, config, rate_per_sec, fund, stop, &st));
        FeedDriver { stats, worker }
    }

    /// Live counters.
    pub fn stats(&self) -> &FeedStats {
        &self.stats
    }

    /// Stops the thread and waits for it (dropping the driver does the same).
    pub fn stop(self) {
        self.worker.stop();
    }
}

/// Submits, waiting while the queue is full. `false` if the engine stopped (or we did).
fn submit(
    stats: &FeedStats,
    stop: &AtomicBool,
    send: impl Fn() -> Result<(), SubmitError>,
) -> bool {
    loop {
        match send() {
            Ok(()) => {
                stats.submitted.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(SubmitError::QueueFull) => {
                stats.backpressure.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Acquire) {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(_) => return false,
        }
    }
}

fn run(
    handle: EngineHandle,
    config: FlowConfig,
    rate: u64,
    fund: bool,
    stop: &AtomicBool,
    stats: &FeedStats,
) {
    let accounts: Vec<AccountId> =
        config.maker_accounts.clone().chain(config.taker_accounts.clone()).map(AccountId).collect();
    let mut flow = SyntheticFlow::new(config, handle.instruments());
    for shard in (0..handle.shards()).filter(|_| !fund) {
        let Ok(left) = handle.open_orders(shard, accounts.clone()) else { return };
        for (instrument, o) in left {
            let cancel =
                CommandKind::Cancel(CancelOrder { order_id: o.id, account: o.account, instrument });
            if !submit(stats, stop, || handle.submit(cancel)) {
                return;
            }
        }
    }
    for shard in 0..handle.shards() {
        // An account an earlier run funded holds something still (the flow only trades
        // what it has); one that holds nothing on this shard was never funded there.
        let unfunded = |account: AccountId| {
            fund || match handle.balances(shard, account) {
                Ok(balances) => balances.unwrap_or_default().iter().all(|b| b.total.0 == 0),
                Err(_) => false,
            }
        };
        let unfunded: Vec<AccountId> = accounts.iter().copied().filter(|a| unfunded(*a)).collect();
        for transfer in flow.funding(handle.assets()) {
            if unfunded.contains(&transfer.account)
                && !submit(stats, stop, || handle.submit_transfer(shard, transfer))
            {
                return;
            }
        }
    }
    let mut ids = BlockIds { handle: handle.clone(), next: 0, end: 0 };
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut skipped: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        let due = if rate == 0 {
            sent + 1024
        } else {
            let elapsed = start.elapsed();
            let due = (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64 - skipped;
            let backlog_max = (BACKLOG_MAX.as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
            if due > sent + backlog_max {
                // Fell behind (engine saturated or machine busy): do not burst to catch up.
                skipped += due - sent - backlog_max;
            }
            due.min(sent + backlog_max)
        };
        while sent < due {
            let kind: CommandKind = flow.next_command(&mut ids);
            if !submit(stats, stop, || handle.submit(kind)) {
                return;
            }
            sent += 1;
        }
        if rate != 0 {
            std::thread::sleep(TICK);
        }
    }
}
