//! The gateway node's side: starts a replica of the engine from the engine node's
//! snapshots and keeps it applying the engine node's commands, repairing any gap.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use tickgate_engine::journal::Record;
use tickgate_engine::runtime::{EngineHandle, EngineRuntime, RuntimeConfig};
use tickgate_engine::snapshot::decode_snapshot;
use tickgate_engine::{Command, InstrumentId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::wire::{self, Batch};
use super::{ClusterStats, Subjects, STALE_AFTER};

/// Why a replica cannot go on: its state no longer follows the engine node's. The
/// gateway stops (a supervisor restarts it from fresh snapshots) rather than serve it.
#[derive(Debug, thiserror::Error)]
#[error("replica of shard {shard} diverged: {why}")]
pub struct Diverged {
    /// The shard.
    pub shard: usize,
    /// What happened.
    pub why: String,
}

/// The engine node as `<p>.info` describes it.
#[derive(Debug, serde::Deserialize)]
struct Info {
    shards: usize,
    epoch: u64,
    node: String,
}

/// The tasks that feed a replica.
#[derive(Debug)]
pub struct Replica {
    followers: Vec<JoinHandle<()>>,
    /// Per shard, the stamp of the last command the replica started from.
    pub started_at: Vec<u64>,
    /// Reports a divergence (the gateway then stops).
    pub diverged: mpsc::Receiver<Diverged>,
}

impl Replica {
    /// Asks the engine node for its shards' state and starts a replica from it (with
    /// `config`'s ring, hooks and clock), then follows every shard's commands. Returns
    /// the replica engine and what follows it.
    pub async fn start(
        client: async_nats::Client,
        subjects: Subjects,
        config: RuntimeConfig,
        stats: Arc<ClusterStats>,
    ) -> anyhow::Result<(EngineRuntime, Replica)> {
        let info = client
            .request(subjects.info(), bytes::Bytes::new())
            .await
            .map_err(|e| anyhow::anyhow!("asking the engine node for its shards: {e}"))?;
        let info: Info = serde_json::from_slice(&info.payload)?;
        tracing::info!(engine = %info.node, shards = info.shards, "following the engine node");
        // Subscribe before the snapshots are taken: every command after them arrives.
        let mut subscribers = Vec::with_capacity(info.shards);
        for shard in 0..info.shards {
            subscribers.push(client.subscribe(subjects.commands(shard)).await?);
        }
        client.flush().await?;
        let mut snapshots = Vec::with_capacity(info.shards);
        for shard in 0..info.shards {
            let bytes = super::fetch_pieces(&client, subjects.snapshot(shard), bytes::Bytes::new())
                .await
                .map_err(|e| anyhow::anyhow!("shard {shard}'s snapshot: {e}"))?;
            let shards = info.shards;
            let owns = move |i: InstrumentId| i.0 as usize % shards == shard;
            let restored = decode_snapshot(&bytes, shard as u32, &config.spec, owns).map_err(
                |(at, what)| anyhow::anyhow!("shard {shard}'s snapshot, byte {at}: {what}"),
            )?;
            snapshots.push(restored);
        }
        let next: Vec<u64> = snapshots.iter().map(|s| s.seq + 1).collect();
        let started_at: Vec<u64> = snapshots.iter().map(|s| s.last_ts).collect();
        let runtime =
            tokio::task::spawn_blocking(move || EngineRuntime::start_replica(config, snapshots))
                .await??;
        let (report, diverged) = mpsc::channel(info.shards);
        let mut followers = Vec::with_capacity(info.shards);
        for (shard, subscriber) in subscribers.into_iter().enumerate() {
            let follower = Follower {
                shard,
                next: next[shard],
                epoch: info.epoch,
                client: client.clone(),
                subjects: subjects.clone(),
                applier: Applier::start(runtime.handle(), shard, Arc::clone(&stats)),
                stats: Arc::clone(&stats),
                clock: Arc::clone(runtime.handle().clock()),
            };
            let report = report.clone();
            followers.push(tokio::spawn(async move {
                if let Err(d) = follower.run(subscriber).await {
                    tracing::error!("{d}");
                    let _ = report.send(d).await;
                }
            }));
        }
        Ok((runtime, Replica { followers, started_at, diverged }))
    }

    /// Stops following (the replica keeps what it has).
    pub fn stop(&self) {
        self.followers.iter().for_each(JoinHandle::abort);
    }
}

/// Hands commands to the replica's shard from a thread of its own (the queue may be
/// full for a moment; the follower's task must not block on it).
struct Applier {
    tx: crossbeam_channel::Sender<Vec<Command>>,
}

impl Applier {
    fn start(handle: EngineHandle, shard: usize, stats: Arc<ClusterStats>) -> Applier {
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<Command>>();
        std::thread::Builder::new()
            .name(format!("replica-{shard}"))
            .spawn(move || {
                for commands in rx {
                    let n = commands.len() as u64;
                    if handle.replicate(shard, commands).is_err() {
                        return;
                    }
                    stats.commands_applied.fetch_add(n, Ordering::Relaxed);
                }
            })
            .expect("spawning a replica thread");
        Applier { tx }
    }
}

/// Follows one shard's commands subject.
struct Follower {
    shard: usize,
    /// The sequence the replica needs next.
    next: u64,
    epoch: u64,
    client: async_nats::Client,
    subjects: Subjects,
    applier: Applier,
    stats: Arc<ClusterStats>,
    clock: tickgate_engine::SharedClock,
}

/// Replay requests a repair makes before it gives up until the next message.
const REPAIR_ATTEMPTS: u32 = 20;

impl Follower {
    async fn run(mut self, mut subscriber: async_nats::Subscriber) -> Result<(), Diverged> {
        loop {
            let message = match tokio::time::timeout(STALE_AFTER, subscriber.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(()),
                Err(_) => {
                    if !self.stats.stale.swap(true, Ordering::AcqRel) {
                        tracing::warn!(
                            shard = self.shard,
                            "no word from the engine node: market data is stale"
                        );
                    }
                    continue;
                }
            };
            if self.stats.stale.swap(false, Ordering::AcqRel) {
                tracing::info!(shard = self.shard, "the engine node is heard again");
            }
            self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_in.fetch_add(message.payload.len() as u64, Ordering::Relaxed);
            let batch = match wire::decode_batch(&message.payload) {
                Ok(batch) => {
                    if let Some(last) = batch.records.last() {
                        let now = self.clock.now().0;
                        let lag = now.saturating_sub(last.command.ts.0) / 1_000;
                        self.stats.lag_us.store(lag, Ordering::Relaxed);
                    }
                    batch
                }
                Err(e) => {
                    // Counted as lost: the next batch or heartbeat shows the gap.
                    tracing::warn!(shard = self.shard, "a damaged commands batch: {e}");
                    continue;
                }
            };
            self.accept(batch).await?;
        }
    }

    /// Applies what `batch` brings after any gap before it is repaired.
    async fn accept(&mut self, batch: Batch) -> Result<(), Diverged> {
        if batch.last_seq + 1 < self.next {
            if batch.epoch == self.epoch {
                // Sent before the snapshot this replica started from: nothing new.
                return Ok(());
            }
            return Err(self.diverged(format!(
                "the engine node restarted at sequence {} and this replica is at {}: it \
                 restarted without its state (durability off?)",
                batch.last_seq,
                self.next - 1
            )));
        }
        if batch.epoch != self.epoch {
            tracing::info!(shard = self.shard, "the engine node restarted; following its new run");
            self.epoch = batch.epoch;
        }
        let reaches = batch.records.first().map_or(batch.last_seq + 1, |r| r.seq);
        if reaches > self.next {
            self.stats.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                shard = self.shard,
                from = self.next,
                to = reaches - 1,
                "repairing a gap"
            );
            if !self.repair(reaches).await? {
                // The engine node did not answer: the next message retries.
                return Ok(());
            }
        }
        self.apply(batch.records);
        Ok(())
    }

    fn apply(&mut self, records: Vec<Record>) {
        let commands: Vec<Command> =
            records.into_iter().filter(|r| r.seq >= self.next).map(|r| r.command).collect();
        if commands.is_empty() {
            return;
        }
        self.next += commands.len() as u64;
        // The applier's thread lives as long as the replica does.
        let _ = self.applier.tx.send(commands);
    }

    /// Replays from `next` until `until` (exclusive). `Ok(false)`: the engine node did not
    /// answer in time.
    async fn repair(&mut self, until: u64) -> Result<bool, Diverged> {
        let mut attempts = 0;
        while self.next < until {
            let payload = bytes::Bytes::copy_from_slice(&self.next.to_le_bytes());
            let reply = match self.client.request(self.subjects.replay(self.shard), payload).await {
                Ok(reply) => reply,
                Err(e) => {
                    attempts += 1;
                    if attempts >= REPAIR_ATTEMPTS {
                        tracing::warn!(shard = self.shard, "replay unanswered: {e}");
                        return Ok(false);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let batch = wire::decode_batch(&reply.payload)
                .map_err(|e| self.diverged(format!("a damaged replay: {e}")))?;
            if batch.flags & wire::TOO_OLD != 0 {
                return Err(self.diverged(format!(
                    "commands from {} are no longer kept by the engine node",
                    self.next
                )));
            }
            if batch.records.is_empty() {
                return Err(self.diverged(format!(
                    "the engine node has nothing from {} though it announced up to {}",
                    self.next,
                    until - 1
                )));
            }
            self.stats.replayed.fetch_add(batch.records.len() as u64, Ordering::Relaxed);
            self.apply(batch.records);
        }
        Ok(true)
    }

    fn diverged(&self, why: String) -> Diverged {
        Diverged { shard: self.shard, why }
    }
}
