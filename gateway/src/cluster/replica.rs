//! The gateway node's side: starts a replica of the engine from the engine node's
//! snapshots and keeps it applying the engine node's commands, repairing any gap.
//!
//! Start-up is in two steps: [`Replica::start`] builds the replica at the snapshots'
//! state (so what the gateway derives from it, users' orders, channels, can be set up at
//! exactly that point), then [`Replica::follow`] starts applying, once the gateway's
//! event consumers read the replica's rings. What arrives meanwhile waits in the
//! subscriptions (or is dropped by NATS past their capacity, and repaired by replay).

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
    /// Its [`crate::auth::secret_check`].
    #[serde(default)]
    secret_check: Option<String>,
}

/// Most shards an engine node may announce (the engine's own limit).
const SHARDS_MAX: usize = 64;

/// Batches of commands waiting for a replica shard's thread, at most: beyond, the
/// follower waits (and NATS buffers, then drops: a gap, repaired).
const APPLY_QUEUE: usize = 1024;

/// The engine node's `<p>.info` answer, once it gives one: a gateway started before the
/// engine node (or while it restarts) waits for it rather than fail.
async fn engine_node(client: &async_nats::Client, subjects: &Subjects) -> async_nats::Message {
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        match client.request(subjects.info(), bytes::Bytes::new()).await {
            Ok(info) => return info,
            Err(e) => {
                tracing::warn!("waiting for the engine node ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// The tasks that feed a replica.
#[derive(Debug)]
pub struct Replica {
    /// Built by [`Replica::start`], running once [`Replica::follow`] is called.
    waiting: Vec<(Follower, async_nats::Subscriber)>,
    followers: Vec<JoinHandle<()>>,
    report: mpsc::Sender<Diverged>,
    /// Per shard, the stamp of the last command the replica starts from.
    pub started_at: Vec<u64>,
    /// Reports a divergence (the gateway then stops).
    pub diverged: mpsc::Receiver<Diverged>,
}

impl Replica {
    /// Asks the engine node for its shards' state and starts a replica from it (with
    /// `config`'s ring, hooks and clock), subscribed to every shard's commands but not yet
    /// applying them (see [`Replica::follow`]). Returns the replica engine and its feed.
    pub async fn start(
        client: async_nats::Client,
        subjects: Subjects,
        config: RuntimeConfig,
        (stats, secret_check): (Arc<ClusterStats>, String),
    ) -> anyhow::Result<(EngineRuntime, Replica)> {
        let info = engine_node(&client, &subjects).await;
        let info: Info = serde_json::from_slice(&info.payload)?;
        if !(1..=SHARDS_MAX).contains(&info.shards) {
            anyhow::bail!("the engine node announces {} shards", info.shards);
        }
        if info.secret_check.is_some_and(|c| c != secret_check) {
            anyhow::bail!(
                "this gateway's token secret (--jwt-secret / TICKGATE_JWT_SECRET) is not the \
                 engine node {}'s: tokens one node signs would be refused by the others \
                 (clients logged out as they move between gateways); give every node the \
                 same secret",
                info.node
            );
        }
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
            let owns = move |i: InstrumentId| i.shard(shards) == shard;
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
        let mut waiting = Vec::with_capacity(info.shards);
        for (shard, subscriber) in subscribers.into_iter().enumerate() {
            let follower = Follower {
                shard,
                next: next[shard],
                epoch: info.epoch,
                client: client.clone(),
                subjects: subjects.clone(),
                applier: Applier::start(
                    runtime.handle(),
                    shard,
                    Arc::clone(&stats),
                    report.clone(),
                ),
                stats: Arc::clone(&stats),
                clock: Arc::clone(runtime.handle().clock()),
            };
            waiting.push((follower, subscriber));
        }
        Ok((runtime, Replica { waiting, followers: Vec::new(), report, started_at, diverged }))
    }

    /// Starts applying the engine node's commands (once everything that derives state
    /// from the replica's events is reading them).
    pub fn follow(&mut self) {
        for (follower, subscriber) in self.waiting.drain(..) {
            let report = self.report.clone();
            self.followers.push(tokio::spawn(async move {
                let shard = follower.shard;
                let d = match follower.run(subscriber).await {
                    Err(d) => d,
                    Ok(()) => Diverged { shard, why: "its commands subscription ended".into() },
                };
                tracing::error!("{d}");
                let _ = report.send(d).await;
            }));
        }
    }

    /// Stops following (the replica keeps what it has).
    pub fn stop(&self) {
        self.followers.iter().for_each(JoinHandle::abort);
    }
}

/// Hands commands to the replica's shard from a thread of its own (the shard's queue may
/// be full for a moment; the follower's task must not block on it).
#[derive(Debug)]
struct Applier {
    tx: mpsc::Sender<Vec<Command>>,
}

impl Applier {
    fn start(
        handle: EngineHandle,
        shard: usize,
        stats: Arc<ClusterStats>,
        report: mpsc::Sender<Diverged>,
    ) -> Applier {
        let (tx, mut rx) = mpsc::channel::<Vec<Command>>(APPLY_QUEUE);
        std::thread::Builder::new()
            .name(format!("replica-{shard}"))
            .spawn(move || {
                while let Some(commands) = rx.blocking_recv() {
                    let n = commands.len() as u64;
                    if let Err(e) = handle.replicate(shard, commands) {
                        let why = format!("the replica engine took no more commands: {e}");
                        let _ = report.blocking_send(Diverged { shard, why });
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
#[derive(Debug)]
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
                    if self.stats.set_stale(self.shard, true) {
                        tracing::warn!(
                            shard = self.shard,
                            "no word from the engine node: market data is stale"
                        );
                    }
                    continue;
                }
            };
            if self.stats.set_stale(self.shard, false) {
                tracing::info!(shard = self.shard, "the engine node is heard again");
            }
            self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_in.fetch_add(message.payload.len() as u64, Ordering::Relaxed);
            let batch = match wire::decode_batch(&message.payload) {
                Ok(batch) if batch.shard as usize == self.shard => batch,
                Ok(batch) => {
                    tracing::warn!(shard = self.shard, "a batch of shard {} here", batch.shard);
                    continue;
                }
                Err(e) => {
                    // Counted as lost: the next batch or heartbeat shows the gap.
                    tracing::warn!(shard = self.shard, "a damaged commands batch: {e}");
                    continue;
                }
            };
            if let Some(last) = batch.records.last() {
                let lag = self.clock.now().0.saturating_sub(last.command.ts.0) / 1_000;
                self.stats.lag_us.store(lag, Ordering::Relaxed);
            }
            self.accept(batch).await?;
        }
    }

    /// Applies what `batch` brings after any gap before it is repaired.
    async fn accept(&mut self, batch: Batch) -> Result<(), Diverged> {
        let have = self.next - 1;
        if batch.epoch != self.epoch {
            // A new run of the engine node: it must hold at least what this replica
            // applied, or its history is not the one this replica followed.
            if batch.run_start < have {
                return Err(self.diverged(format!(
                    "the engine node restarted from sequence {} and this replica is at {have}: \
                     it lost commands it had published (durability off, or a crash without \
                     fsync)",
                    batch.run_start
                )));
            }
            tracing::info!(shard = self.shard, "the engine node restarted; following its new run");
            self.epoch = batch.epoch;
        }
        if batch.last_seq < have {
            // Sent before the snapshot this replica started from: nothing new.
            return Ok(());
        }
        let reaches = batch.records.first().map_or(batch.last_seq.saturating_add(1), |r| r.seq);
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
        self.apply(batch.records).await
    }

    /// Applies the records from `next` on; they must start at or before it (consecutive:
    /// [`wire::decode_batch`] checked).
    async fn apply(&mut self, records: Vec<Record>) -> Result<(), Diverged> {
        match records.first() {
            Some(first) if first.seq > self.next => {
                return Err(self.diverged(format!(
                    "commands from {} where {} was needed",
                    first.seq, self.next
                )))
            }
            None => return Ok(()),
            Some(_) => {}
        }
        let commands: Vec<Command> =
            records.into_iter().filter(|r| r.seq >= self.next).map(|r| r.command).collect();
        if commands.is_empty() {
            return Ok(());
        }
        self.next += commands.len() as u64;
        if self.applier.tx.send(commands).await.is_err() {
            return Err(self.diverged("the replica engine stopped".into()));
        }
        Ok(())
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
            if batch.shard as usize != self.shard || batch.epoch != self.epoch {
                // Another run answered (the engine node restarted meanwhile): ask again
                // once its batches tell this follower about it.
                return Ok(false);
            }
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
            self.apply(batch.records).await?;
        }
        Ok(true)
    }

    fn diverged(&self, why: String) -> Diverged {
        Diverged { shard: self.shard, why }
    }
}
