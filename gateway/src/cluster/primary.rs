//! The engine node's side: hands each shard's applied commands to NATS and answers the
//! gateways' requests (snapshots, replays, order entry, order ids).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use tickgate_engine::journal::encode_record;
use tickgate_engine::runtime::{CommandTap, EngineHandle};
use tickgate_engine::{Command, CommandKind, OrderId, UnixNanos};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::wire::{self, instrument_of, SubmitCode};
use super::{Subjects, HEARTBEAT};
use crate::idempotency::{Claim, KeyCache};

/// Bytes of encoded commands each shard keeps for replays (about a million commands).
pub const LOG_BYTES_MAX: usize = 64 << 20;
/// Largest batch of records in one message (NATS' default `max_payload` is 1 MiB; a
/// smaller one the server announces lowers it).
pub const MESSAGE_BYTES_MAX: usize = 256 << 10;
/// Order ids handed to a gateway at once.
pub const ID_BLOCK: u64 = 4_096;

/// Each shard's recent commands, encoded, as the engine applied them.
#[derive(Debug)]
pub struct CommandLog {
    shards: Vec<Mutex<ShardLog>>,
    wake: Vec<Notify>,
}

#[derive(Debug, Default)]
struct ShardLog {
    /// `(first seq, last seq, framed records)`, oldest first.
    batches: VecDeque<(u64, u64, Vec<u8>)>,
    bytes: usize,
    /// The last sequence applied.
    last_seq: u64,
    /// The stamp of the last command applied.
    last_ts: u64,
    /// The last sequence this run started with (recovered).
    run_start: u64,
}

/// What a replay from a sequence finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Framed records from the wanted sequence on (empty: nothing after it yet), and the
    /// sequence of the last one.
    Records(Vec<u8>, u64),
    /// The wanted sequence is no longer kept.
    TooOld,
}

impl CommandLog {
    /// A log for `shards` shards whose last applied sequences are `last_seqs`.
    pub fn new(last_seqs: &[u64]) -> Arc<CommandLog> {
        let shards = last_seqs
            .iter()
            .map(|&last_seq| {
                Mutex::new(ShardLog { last_seq, run_start: last_seq, ..ShardLog::default() })
            })
            .collect();
        Arc::new(CommandLog { shards, wake: last_seqs.iter().map(|_| Notify::new()).collect() })
    }

    /// Where `shard` starts (its recovered sequence), before the engine applies anything.
    pub fn start_at(&self, shard: usize, last_seq: u64) {
        if let Some(slot) = self.shards.get(shard) {
            let mut log = slot.lock().unwrap_or_else(|e| e.into_inner());
            if log.batches.is_empty() {
                (log.last_seq, log.run_start) = (last_seq, last_seq);
            }
        }
    }

    /// The tap to give the engine: encodes each batch once and wakes its publisher.
    pub fn tap(self: &Arc<Self>) -> CommandTap {
        let log = Arc::clone(self);
        Arc::new(move |shard, first, commands: &[Command]| log.append(shard, first, commands))
    }

    fn append(&self, shard: usize, first: u64, commands: &[Command]) {
        let Some(slot) = self.shards.get(shard) else { return };
        let mut bytes = Vec::with_capacity(commands.len() * 96);
        for (i, c) in commands.iter().enumerate() {
            encode_record(first + i as u64, c, &mut bytes);
        }
        let last = first + commands.len() as u64 - 1;
        let mut log = slot.lock().unwrap_or_else(|e| e.into_inner());
        log.bytes += bytes.len();
        log.batches.push_back((first, last, bytes));
        log.last_seq = last;
        if let Some(c) = commands.last() {
            log.last_ts = c.ts.0;
        }
        while log.bytes > LOG_BYTES_MAX && log.batches.len() > 1 {
            if let Some((_, _, old)) = log.batches.pop_front() {
                log.bytes -= old.len();
            }
        }
        drop(log);
        self.wake[shard].notify_one();
    }

    /// The last sequence `shard` started this run with.
    pub fn run_start(&self, shard: usize) -> u64 {
        self.shards.get(shard).map_or(0, |s| s.lock().unwrap_or_else(|e| e.into_inner()).run_start)
    }

    /// The first sequence the log still holds (`last_seq + 1` when empty).
    pub fn first_kept(&self, shard: usize) -> u64 {
        self.shards.get(shard).map_or(1, |s| {
            let log = s.lock().unwrap_or_else(|e| e.into_inner());
            log.batches.front().map_or(log.last_seq + 1, |b| b.0)
        })
    }

    /// The stamp of `shard`'s last command applied this run (0: none yet).
    pub fn last_ts(&self, shard: usize) -> u64 {
        self.shards.get(shard).map_or(0, |s| s.lock().unwrap_or_else(|e| e.into_inner()).last_ts)
    }

    /// The last sequence `shard` applied.
    pub fn last_seq(&self, shard: usize) -> u64 {
        self.shards.get(shard).map_or(0, |s| s.lock().unwrap_or_else(|e| e.into_inner()).last_seq)
    }

    /// Records of `shard` from sequence `from` on, at most `max` bytes (a message's
    /// payload must fit the server's `max_payload`).
    pub fn since(&self, shard: usize, from: u64, max: usize) -> Since {
        // Sequences start at 1.
        let from = from.max(1);
        let Some(slot) = self.shards.get(shard) else { return Since::TooOld };
        let log = slot.lock().unwrap_or_else(|e| e.into_inner());
        if from > log.last_seq {
            return Since::Records(Vec::new(), from - 1);
        }
        match log.batches.front() {
            Some((first, _, _)) if *first <= from => {}
            _ => return Since::TooOld,
        }
        let (mut out, mut included) = (Vec::new(), from - 1);
        for (first, last, bytes) in &log.batches {
            if *last < from {
                continue;
            }
            if *first >= from && out.len() + bytes.len() <= max {
                out.extend_from_slice(bytes);
                included = *last;
                continue;
            }
            // Part of a batch: its records from `from` on, as many as fit.
            let records = tickgate_engine::journal::decode_records(bytes).unwrap_or_default();
            for r in &records {
                if r.seq <= included {
                    continue;
                }
                let before = out.len();
                encode_record(r.seq, &r.command, &mut out);
                if out.len() > max {
                    out.truncate(before);
                    return Since::Records(out, included);
                }
                included = r.seq;
            }
        }
        Since::Records(out, included)
    }
}

/// Records of `shard` from sequence `from` on, read from the journal in `dir` (what the
/// in-memory log no longer holds, or never held: commands a previous run journaled but did
/// not get to publish before it stopped), at most about `max` bytes.
pub fn journal_since(dir: &Path, shard: usize, from: u64, max: usize) -> Since {
    // Sequences start at 1.
    let from = from.max(1);
    let shard_dir = tickgate_engine::durable::shard_dir(dir, shard);
    let Ok(segments) = tickgate_engine::journal::list_segments(&shard_dir) else {
        return Since::TooOld;
    };
    // The last segment starting at or before `from`, and those after it.
    let Some(start) = segments.iter().rposition(|(first, _)| *first <= from) else {
        return Since::TooOld;
    };
    let (mut out, mut included) = (Vec::new(), from - 1);
    let last_index = segments.len() - 1;
    for (i, (_, path)) in segments.iter().enumerate().skip(start) {
        let mut full = false;
        let each = |r: tickgate_engine::journal::Record| {
            if r.seq == included + 1 && !full {
                let before = out.len();
                encode_record(r.seq, &r.command, &mut out);
                if out.len() > max {
                    out.truncate(before);
                    full = true;
                } else {
                    included = r.seq;
                }
            }
        };
        let read =
            tickgate_engine::journal::read_segment(path, shard as u32, None, i == last_index, each);
        if let Err(e) = read {
            tracing::warn!("replaying from the journal: {e}");
            break;
        }
        if full {
            break;
        }
    }
    if included < from {
        return Since::TooOld;
    }
    Since::Records(out, included)
}

/// The engine node's NATS tasks; they end when dropped.
#[derive(Debug)]
pub struct Primary {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Primary {
    /// Starts publishing `log` and answering requests for `engine`.
    pub async fn start(
        client: async_nats::Client,
        subjects: Subjects,
        (engine, keys): (EngineHandle, Arc<KeyCache>),
        log: Arc<CommandLog>,
        (node, secret_check): (String, String),
        journal: Option<PathBuf>,
    ) -> anyhow::Result<Primary> {
        // A run id: gateways see the engine node restart when it changes.
        let epoch = engine.clock().now().0;
        // Gateways hold blocks of order ids earlier runs handed out and may still use:
        // this run's ids start past them (the mark on disk; without a data directory, far
        // above what was recovered).
        let ids = IdMark::open(journal.as_deref(), &engine)?;
        let shards = engine.shards();
        let mut tasks = Vec::new();
        let ctx = Arc::new(Ctx {
            client,
            subjects,
            engine,
            keys,
            log,
            epoch,
            node,
            journal,
            ids,
            secret_check,
            queued_ts: (0..shards).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
        });
        for shard in 0..ctx.engine.shards() {
            tasks.push(tokio::spawn(publish(Arc::clone(&ctx), shard)));
            let replays = ctx.client.subscribe(ctx.subjects.replay(shard)).await?;
            tasks.push(tokio::spawn(serve_each(Arc::clone(&ctx), replays, move |c, m| {
                replay(c, shard, m)
            })));
            let snapshots = ctx.client.subscribe(ctx.subjects.snapshot(shard)).await?;
            tasks.push(tokio::spawn(serve_snapshots(Arc::clone(&ctx), snapshots, shard)));
            let submits = ctx.client.subscribe(ctx.subjects.submit(shard)).await?;
            tasks.push(tokio::spawn(serve(Arc::clone(&ctx), submits, move |c, m| {
                submit(c, shard, m)
            })));
        }
        let ids = ctx.client.subscribe(ctx.subjects.ids()).await?;
        tasks.push(tokio::spawn(serve(Arc::clone(&ctx), ids, |c, _| async move {
            let ids = c.engine.reserve_order_ids(ID_BLOCK);
            // On disk before anyone may use them (fsync).
            let mark = Arc::clone(&c);
            let saved = tokio::task::spawn_blocking(move || mark.ids.save(ids.end)).await;
            match saved {
                Ok(Ok(())) => wire::ids_reply(ids.start, ID_BLOCK),
                _ => wire::ids_reply(0, 0),
            }
        })));
        let head = ctx.client.subscribe(ctx.subjects.head()).await?;
        tasks.push(tokio::spawn(serve_each(Arc::clone(&ctx), head, |c, _| head_stamps(c))));
        let info = ctx.client.subscribe(ctx.subjects.info()).await?;
        tasks.push(tokio::spawn(serve(Arc::clone(&ctx), info, |c, _| async move {
            let info = serde_json::json!({
                "shards": c.engine.shards(), "epoch": c.epoch, "node": c.node,
                "secret_check": c.secret_check,
            });
            Bytes::from(info.to_string())
        })));
        ctx.client.flush().await?;
        Ok(Primary { tasks })
    }
}

/// The order ids handed to gateways so far, kept in `<data-dir>/cluster-ids` so a later
/// run never hands them out again.
struct IdMark {
    file: Option<PathBuf>,
}

impl IdMark {
    /// Reads the mark and moves `engine`'s order ids past it.
    fn open(dir: Option<&Path>, engine: &EngineHandle) -> anyhow::Result<IdMark> {
        let Some(dir) = dir else {
            // Nothing on disk, nothing recovered either: a fresh engine's ids are all new.
            return Ok(IdMark { file: None });
        };
        let file = dir.join("cluster-ids");
        let mark = match std::fs::read_to_string(&file) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| anyhow::anyhow!("{}: not an order id mark ({e})", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", file.display())),
        };
        let next = engine.reserve_order_ids(0).start;
        if mark > next {
            let _ = engine.reserve_order_ids(mark - next);
        }
        Ok(IdMark { file: Some(file) })
    }

    /// Records that ids below `end` may be in use.
    fn save(&self, end: u64) -> std::io::Result<()> {
        use std::io::Write;
        let Some(file) = &self.file else { return Ok(()) };
        let temp = file.with_extension("tmp");
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(end.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&temp, file)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

struct Ctx {
    journal: Option<PathBuf>,
    ids: IdMark,
    client: async_nats::Client,
    subjects: Subjects,
    engine: EngineHandle,
    /// Every keyed order of every gateway passes here: the one place that sees them all.
    keys: Arc<KeyCache>,
    log: Arc<CommandLog>,
    epoch: u64,
    node: String,
    /// [`crate::auth::secret_check`] of the token secret, for gateways to compare.
    secret_check: String,
    /// Per shard, the engine time at which the last gateway command was queued.
    queued_ts: Vec<std::sync::atomic::AtomicU64>,
}

impl Ctx {
    fn origin(&self, shard: usize) -> wire::Origin {
        wire::Origin {
            epoch: self.epoch,
            run_start: self.log.run_start(shard),
            shard: shard as u32,
        }
    }

    /// The most bytes of records (or snapshot) one message carries on this server.
    fn message_max(&self) -> usize {
        let max_payload = self.client.server_info().max_payload;
        max_payload.saturating_sub(1024).clamp(1024, MESSAGE_BYTES_MAX)
    }

    async fn send(&self, subject: String, payload: Bytes) {
        // (Counted by the client: `ClusterStats::client`.)
        if let Err(e) = self.client.publish(subject, payload).await {
            // Disconnected and the client's buffer full: the gateways repair the gap.
            tracing::debug!("publish failed: {e}");
        }
    }
}

/// Publishes `shard`'s commands as they come, coalescing whatever the engine applied
/// while the previous message went out, and a heartbeat when there is nothing to send.
async fn publish(ctx: Arc<Ctx>, shard: usize) {
    let subject = ctx.subjects.commands(shard);
    // From what this run applied before the publisher started (all of it is kept).
    let mut next = ctx.log.first_kept(shard);
    loop {
        let woken = tokio::time::timeout(HEARTBEAT, ctx.log.wake[shard].notified()).await.is_ok();
        loop {
            let mut last = ctx.log.last_seq(shard);
            let records = match ctx.log.since(shard, next, ctx.message_max()) {
                Since::Records(records, included) => {
                    (next, last) = (included + 1, last.max(included));
                    records
                }
                Since::TooOld => {
                    // Fell more than the log behind (NATS stalled for long): skip ahead;
                    // gateways replay what they miss from the journal's log or restart.
                    next = last + 1;
                    Vec::new()
                }
            };
            if records.is_empty() {
                if !woken {
                    let heartbeat = wire::batch_header(0, ctx.origin(shard), last, &[]);
                    ctx.send(subject.clone(), heartbeat).await;
                }
                break;
            }
            let message = wire::batch_header(0, ctx.origin(shard), last, &records);
            ctx.send(subject.clone(), message).await;
        }
    }
}

/// Answers every request on `requests` with `answer`.
async fn serve<F, Fut>(ctx: Arc<Ctx>, mut requests: async_nats::Subscriber, answer: F)
where
    F: Fn(Arc<Ctx>, async_nats::Message) -> Fut,
    Fut: std::future::Future<Output = Bytes>,
{
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply.clone() else { continue };
        let payload = answer(Arc::clone(&ctx), message).await;
        ctx.send(reply.to_string(), payload).await;
    }
}

/// Answers each request on `requests` with `answer` in a task of its own (answers that
/// may read the journal must not hold up the others).
async fn serve_each<F, Fut>(ctx: Arc<Ctx>, mut requests: async_nats::Subscriber, answer: F)
where
    F: Fn(Arc<Ctx>, async_nats::Message) -> Fut,
    Fut: std::future::Future<Output = Bytes> + Send + 'static,
{
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply.clone() else { continue };
        let (c, answer) = (Arc::clone(&ctx), answer(Arc::clone(&ctx), message));
        tokio::spawn(async move {
            let payload = answer.await;
            c.send(reply.to_string(), payload).await;
        });
    }
}

async fn replay(ctx: Arc<Ctx>, shard: usize, message: async_nats::Message) -> Bytes {
    let from = match <[u8; 8]>::try_from(message.payload.as_ref()) {
        Ok(b) => u64::from_le_bytes(b),
        Err(_) => {
            let last = ctx.log.last_seq(shard);
            return wire::batch_header(wire::TOO_OLD, ctx.origin(shard), last, &[]);
        }
    };
    let last = ctx.log.last_seq(shard);
    let max = ctx.message_max();
    let mut since = ctx.log.since(shard, from, max);
    if let (Since::TooOld, Some(dir)) = (&since, &ctx.journal) {
        let dir = dir.clone();
        let read = move || journal_since(&dir, shard, from, max);
        since = tokio::task::spawn_blocking(read).await.unwrap_or(Since::TooOld);
    }
    match since {
        Since::Records(r, included) => {
            wire::batch_header(0, ctx.origin(shard), last.max(included), &r)
        }
        Since::TooOld => wire::batch_header(wire::TOO_OLD, ctx.origin(shard), last, &[]),
    }
}

/// Answers each snapshot request with the shard's state now, in pieces that fit the
/// server's `max_payload`, all to the request's reply subject in order.
async fn serve_snapshots(ctx: Arc<Ctx>, mut requests: async_nats::Subscriber, shard: usize) {
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply.clone() else { continue };
        let engine = ctx.engine.clone();
        let taken = tokio::task::spawn_blocking(move || engine.snapshot(shard)).await;
        let result = match taken {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let piece =
            (ctx.client.server_info().max_payload.saturating_sub(1024)).clamp(1024, 512 << 10);
        for payload in wire::answer_pieces(result, piece) {
            ctx.send(reply.to_string(), payload).await;
        }
    }
}

/// How long a head request waits for the engine to apply the gateways' commands queued
/// before it came.
const HEAD_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer to a head request: per shard, the timestamp of the last command applied, once
/// every command a gateway had queued when it came is applied (a command queued is not yet
/// applied: answered before it is, a gateway could conclude that a request its head does
/// not cover was never carried out). A single byte, "not known", if that takes longer
/// than [`HEAD_WAIT_MAX`] (the gateway then does not count itself caught up).
async fn head_stamps(ctx: Arc<Ctx>) -> Bytes {
    let started = std::time::Instant::now();
    let queued: Vec<u64> = ctx.queued_ts.iter().map(|t| t.load(Ordering::Acquire)).collect();
    while (0..ctx.engine.shards()).any(|s| ctx.log.last_ts(s) < queued.get(s).copied().unwrap_or(0))
    {
        if started.elapsed() > HEAD_WAIT_MAX {
            return Bytes::from_static(b"?");
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mut stamps = bytes::BytesMut::with_capacity(ctx.engine.shards() * 8);
    for shard in 0..ctx.engine.shards() {
        bytes::BufMut::put_u64_le(&mut stamps, ctx.log.last_ts(shard));
    }
    stamps.freeze()
}

async fn submit(ctx: Arc<Ctx>, shard: usize, message: async_nats::Message) -> Bytes {
    let now = ctx.engine.clock().now().0;
    let code = match wire::decode_submit(&message.payload) {
        // Funding is the engine node's own business: gateways send trading commands.
        Ok((CommandKind::Transfer(_), _)) | Err(_) => SubmitCode::BadRequest,
        // The gateway has given up on it (it came late: a reconnection sent it now).
        Ok((_, deadline)) if now > deadline => SubmitCode::Expired,
        Ok((kind, _)) => match instrument_of(kind).and_then(|i| ctx.engine.shard_of(i)) {
            Some(owner) if owner == shard => match submit_claimed(&ctx, kind, UnixNanos(now)) {
                Ok(code) => {
                    if code == SubmitCode::Queued {
                        // Its journal stamp will be at least this (see `head_stamps`).
                        if let Some(queued) = ctx.queued_ts.get(shard) {
                            queued.fetch_max(now, Ordering::AcqRel);
                        }
                    }
                    code
                }
                Err((order, at)) => return wire::repeat_reply(order, at),
            },
            _ => SubmitCode::UnknownInstrument,
        },
    };
    code.reply()
}

/// Queues `kind`, a new order's idempotency key claimed first. Each engine shard remembers
/// the keys of its own orders only, and each gateway those placed through it: two gateways
/// given one key at once for orders on two shards would both place theirs. Every keyed
/// order of every gateway comes through here, so the second is refused. A retry of the
/// same order (same fingerprint) goes on: its shard answers it as a repeat.
///
/// A retry of an order another gateway placed (same key, same order, another order id) is
/// not queued either: `Err` names that order, which the gateway answers with. (Queued,
/// the engine would refuse it as a `duplicate_request`: the right answer, but also a
/// `rejected` report on the owner's `orders` channel for an order that never was.)
fn submit_claimed(
    ctx: &Ctx,
    kind: CommandKind,
    now: UnixNanos,
) -> Result<SubmitCode, (OrderId, UnixNanos)> {
    let claimed = match kind {
        CommandKind::New(order) => order.key.map(|key| {
            let fingerprint = tickgate_engine::idempotency::fingerprint(&order);
            (order, key, ctx.keys.claim(order.account, key, fingerprint, order.order_id, now))
        }),
        _ => None,
    };
    let new = match claimed {
        Some((_, _, Claim::Reused)) => return Ok(SubmitCode::KeyReused),
        Some((order, _, Claim::Retry(first, at))) if first != order.order_id => {
            return Err((first, at))
        }
        Some((order, key, Claim::New)) => Some((order, key)),
        Some((_, _, Claim::Retry(..))) | None => None,
    };
    let result = ctx.engine.submit(kind);
    if let (Err(_), Some((order, key))) = (&result, new) {
        // Never queued: the key is free again.
        ctx.keys.release(order.account, key, order.order_id);
    }
    Ok(SubmitCode::of(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::{AccountId, CancelOrder, InstrumentId, OrderId, UnixNanos};

    fn commands(n: u64) -> Vec<Command> {
        (0..n)
            .map(|i| Command {
                ts: UnixNanos(1_000 + i),
                kind: CommandKind::Cancel(CancelOrder {
                    order_id: OrderId(i),
                    account: AccountId(1),
                    instrument: InstrumentId(0),
                }),
            })
            .collect()
    }

    fn seqs(bytes: &[u8]) -> Vec<u64> {
        tickgate_engine::journal::decode_records(bytes).unwrap().iter().map(|r| r.seq).collect()
    }

    #[test]
    fn the_log_answers_from_any_kept_sequence_and_says_when_one_is_gone() {
        let log = CommandLog::new(&[10]);
        assert_eq!(log.since(0, 11, usize::MAX), Since::Records(Vec::new(), 10));
        assert!(matches!(log.since(0, 5, usize::MAX), Since::TooOld), "before the log began");
        log.append(0, 11, &commands(3));
        log.append(0, 14, &commands(2));
        assert_eq!(log.last_seq(0), 15);
        let Since::Records(all, 15) = log.since(0, 11, usize::MAX) else { panic!() };
        assert_eq!(seqs(&all), [11, 12, 13, 14, 15]);
        let Since::Records(tail, 15) = log.since(0, 13, usize::MAX) else { panic!() };
        assert_eq!(seqs(&tail), [13, 14, 15], "cut inside the first batch");
        let one = tail.len() / 3;
        let Since::Records(first, 12) = log.since(0, 11, 2 * one + 1) else { panic!() };
        assert_eq!(seqs(&first), [11, 12], "no more than the limit");
        let Since::Records(next, 14) = log.since(0, 13, 2 * one) else { panic!() };
        assert_eq!(seqs(&next), [13, 14], "across batches, no more than the limit");
        assert_eq!(log.since(0, 16, usize::MAX), Since::Records(Vec::new(), 15));
        assert!(matches!(log.since(3, 1, usize::MAX), Since::TooOld), "no such shard");
        assert!(matches!(log.since(0, 0, usize::MAX), Since::TooOld), "0 is read as 1");
    }

    #[test]
    fn order_ids_start_past_what_earlier_runs_handed_out() {
        use tickgate_engine::runtime::{EngineRuntime, RuntimeConfig};
        let dir = std::env::temp_dir().join(format!("tickgate-id-mark-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let runtime = EngineRuntime::start(RuntimeConfig::default()).expect("starts");
        let engine = runtime.handle();
        // No mark yet: ids as the engine has them.
        let mark = IdMark::open(Some(&dir), &engine).expect("opens");
        assert!(engine.allocate_order_id().0 < 10);
        mark.save(5_000).expect("saved");
        assert_eq!(std::fs::read_to_string(dir.join("cluster-ids")).unwrap(), "5000");
        // The next run (here: the same engine, as a recovered one would be) starts past it.
        IdMark::open(Some(&dir), &engine).expect("opens");
        assert!(engine.allocate_order_id().0 >= 5_000);
        std::fs::write(dir.join("cluster-ids"), "not a number").unwrap();
        assert!(IdMark::open(Some(&dir), &engine).is_err(), "a damaged mark stops the start");
        runtime.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_journal_answers_what_the_log_never_held() {
        use tickgate_engine::durable::DurabilityConfig;
        use tickgate_engine::runtime::{EngineRuntime, RuntimeConfig};
        let dir =
            std::env::temp_dir().join(format!("tickgate-journal-since-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut durability = DurabilityConfig::new(&dir);
        durability.segment_bytes = 4 << 10;
        let config = RuntimeConfig { durability: Some(durability), ..RuntimeConfig::default() };
        let runtime = EngineRuntime::start(config).expect("starts");
        let handle = runtime.handle();
        for (i, c) in commands(300).into_iter().enumerate() {
            handle.submit(c.kind).expect("queued");
            if i % 20 == 0 {
                // Many small batches: the journal rotates its segments between them.
                handle.digest(0).expect("applied");
            }
        }
        handle.digest(0).expect("applied");
        runtime.shutdown();
        assert!(tickgate_engine::journal::list_segments(&dir.join("shard-0")).unwrap().len() > 2);
        let Since::Records(r, 300) = journal_since(&dir, 0, 1, usize::MAX) else { panic!() };
        assert_eq!(seqs(&r), (1..=300).collect::<Vec<_>>(), "across segments");
        let Since::Records(r, last) = journal_since(&dir, 0, 150, 1024) else { panic!() };
        assert!(r.len() <= 1024 && last > 150 && last < 300);
        assert_eq!(seqs(&r), (150..=last).collect::<Vec<_>>());
        assert!(matches!(journal_since(&dir, 0, 301, usize::MAX), Since::TooOld), "not journaled");
        assert!(matches!(journal_since(&dir, 1, 1, usize::MAX), Since::TooOld), "no such shard");
        let Since::Records(r, 300) = journal_since(&dir, 0, 0, usize::MAX) else { panic!() };
        assert_eq!(seqs(&r).first(), Some(&1), "0 is read as 1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_log_forgets_its_oldest_batches_past_its_bound() {
        let log = CommandLog::new(&[0]);
        let per_batch = commands(1_000);
        let mut seq = 1;
        while log.shards[0].lock().unwrap().batches.front().is_none_or(|b| b.0 == 1) {
            log.append(0, seq, &per_batch);
            seq += 1_000;
            assert!(seq < 10_000_000, "the log never forgets");
        }
        assert!(log.shards[0].lock().unwrap().bytes <= LOG_BYTES_MAX);
        assert!(matches!(log.since(0, 1, usize::MAX), Since::TooOld));
        let Since::Records(r, _) = log.since(0, seq - 500, usize::MAX) else { panic!() };
        assert_eq!(seqs(&r).first(), Some(&(seq - 500)));
    }
}
