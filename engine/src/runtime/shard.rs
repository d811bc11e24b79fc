//! A shard's thread: waits for requests, applies commands in batches, answers questions
//! between two commands, publishes each batch's events, hands snapshots over.

use super::*;

/// A read-only question answered by a shard between two commands.
pub(super) enum Query {
    Book { instrument: InstrumentId, depth: usize, reply: Sender<Option<BookSnapshot>> },
    Balances { account: AccountId, reply: Sender<Option<Vec<Balance>>> },
    Digest { reply: Sender<ShardDigest> },
    OpenOrders { accounts: Vec<AccountId>, reply: Sender<Vec<(InstrumentId, RestingOrder)>> },
    Halted { instrument: InstrumentId, reply: Sender<Option<bool>> },
    ExecSeqs { accounts: Vec<AccountId>, reply: Sender<Vec<Option<Seq>>> },
    Keys { accounts: Vec<AccountId>, reply: Sender<Vec<(AccountId, KeyRecord)>> },
    Key { account: AccountId, key: IdempotencyKey, reply: Sender<Option<KeyRecord>> },
    Snapshot { reply: Sender<Vec<u8>> },
    Seqs { instrument: InstrumentId, reply: Sender<Option<crate::engine::ChannelSeqs>> },
}

pub(super) enum Request {
    Command(Command),
    Query(Query),
    /// A journaled batch, in journal order (durable shards only).
    Batch(Vec<Request>),
    /// A primary's commands, stamped and in its order (replicas only).
    Replicated(Vec<Command>),
    Stop,
}

impl JournalItem for Request {
    fn command_mut(&mut self) -> Option<&mut Command> {
        match self {
            Request::Command(c) => Some(c),
            _ => None,
        }
    }

    fn is_stop(&self) -> bool {
        matches!(self, Request::Stop)
    }
}

pub(super) struct ShardWorker {
    pub(super) board: Arc<BalanceBoard>,
    pub(super) engine: Engine,
    pub(super) rx: Receiver<Request>,
    pub(super) writer: RingWriter,
    pub(super) stats: Arc<ShardStats>,
    pub(super) batch_max: usize,
    pub(super) on_publish: Option<PublishHook>,
    pub(super) idle_spin: Duration,
    /// Stamps commands when nothing is journaled (the journal stage does otherwise);
    /// tracks the last stamp either way.
    pub(super) stamper: Stamper,
    pub(super) durable: Option<DurableState>,
    /// Sequence of the last command applied (the journal's when durable).
    pub(super) applied: u64,
    /// The command tap and the commands applied since it was last called.
    pub(super) on_commands: Option<(CommandTap, Vec<Command>)>,
    pub(super) shard: usize,
}

/// What a durable shard's engine thread tracks: its journal position and when to
/// snapshot.
pub(super) struct DurableState {
    pub(super) shard: u32,
    pub(super) applied_seq: u64,
    pub(super) last_snapshot_seq: u64,
    pub(super) snapshot_every: u64,
    pub(super) snapshots: Sender<SnapshotJob>,
    pub(super) stats: Arc<JournalStats>,
}

impl ShardWorker {
    /// Spins for up to `idle_spin` (commands usually arrive back to back under load, and
    /// waking a parked thread costs tens of microseconds), then parks until a command comes.
    /// A zero `idle_spin` parks at once.
    fn wait(&self) -> Option<Request> {
        if self.idle_spin.is_zero() {
            return self.rx.recv().ok();
        }
        let backoff = Backoff::new();
        let start = Instant::now();
        loop {
            match self.rx.try_recv() {
                Ok(request) => return Some(request),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {
                    // A poll at full backoff is 64 pause instructions, 1.6 µs on this
                    // machine's cores: reading the clock (tens of nanoseconds) after each
                    // keeps the spin within the configured time (read every 64 polls, it
                    // made a 50 µs spin, or a zero one, last 100 µs).
                    if start.elapsed() >= self.idle_spin {
                        return self.rx.recv().ok();
                    }
                    backoff.spin();
                }
            }
        }
    }

    /// Handles one request; `false` means stop.
    fn handle(&mut self, request: Request) -> bool {
        match request {
            Request::Command(mut command) => {
                match &mut self.durable {
                    // Stamped by the journal stage, which wrote it down with that stamp.
                    Some(d) => {
                        d.applied_seq += 1;
                        self.stamper.observe(command.ts);
                    }
                    // Ingest time, made strictly increasing per shard so replays and clients
                    // can rely on timestamps never going backwards, and readers can tell
                    // commands apart by their timestamp.
                    // (A command that asks for a stamp, a replayed one, keeps it when it
                    // comes after every stamp so far: `Stamper::stamp_as`.)
                    None => command.ts = self.stamper.stamp_as(command.ts),
                }
                self.apply(command);
            }
            Request::Replicated(commands) => {
                for command in commands {
                    self.stamper.observe(command.ts);
                    self.apply(command);
                }
            }
            Request::Query(query) => self.answer(query),
            Request::Batch(requests) => {
                for request in requests {
                    if !self.handle(request) {
                        return false;
                    }
                }
            }
            Request::Stop => return false,
        }
        true
    }

    fn apply(&mut self, command: Command) {
        self.applied += 1;
        self.engine.process(&command, &mut self.writer);
        if let Some((_, tapped)) = &mut self.on_commands {
            tapped.push(command);
        }
    }

    /// Hands the batch's commands to the tap.
    fn tap(&mut self) {
        if let Some((tap, tapped)) = &mut self.on_commands {
            if !tapped.is_empty() {
                tap(self.shard, self.applied + 1 - tapped.len() as u64, tapped);
                tapped.clear();
            }
        }
    }

    fn answer(&mut self, query: Query) {
        // Publish first (balances, then events): whoever gets the answer can then read
        // every event it reflects.
        let board = &self.board;
        self.engine.take_changed_balances(|a, row, p| board.write(a, row, p));
        self.writer.publish();
        // A requester that went away is not the engine's problem: ignore send errors.
        match query {
            Query::Book { instrument, depth, reply } => {
                let _ = reply.send(self.engine.book_snapshot(instrument, depth));
            }
            Query::ExecSeqs { accounts, reply } => {
                let ledger = self.engine.ledger();
                let _ = reply.send(accounts.iter().map(|a| ledger.exec_seq(*a)).collect());
            }
            Query::Balances { account, reply } => {
                let ledger = self.engine.ledger();
                let balances = ledger.contains(account).then(|| {
                    (0..self.engine.assets().len())
                        .map(|a| ledger.balance(account, AssetId(a as u16)))
                        .collect()
                });
                let _ = reply.send(balances);
            }
            Query::Digest { reply } => {
                let _ = reply.send(ShardDigest {
                    state: self.engine.state_digest(),
                    counters: self.engine.counters(),
                    journal_seq: self.durable.as_ref().map_or(0, |d| d.applied_seq),
                });
            }
            Query::Halted { instrument, reply } => {
                let _ = reply.send(self.engine.is_halted(instrument));
            }
            Query::Key { account, key, reply } => {
                let _ = reply.send(self.engine.key_record(account, key, self.stamper.last()));
            }
            Query::Seqs { instrument, reply } => {
                let _ = reply.send(self.engine.channel_seqs(instrument));
            }
            Query::Snapshot { reply } => {
                let (shard, last_ts) = (self.shard as u32, self.stamper.last().0);
                let bytes =
                    crate::snapshot::encode_snapshot(&self.engine, shard, self.applied, last_ts);
                let _ = reply.send(bytes);
            }
            Query::Keys { accounts, reply } => {
                let records = self.engine.key_records().filter(|(a, _)| accounts.contains(a));
                let _ = reply.send(records.collect());
            }
            Query::OpenOrders { accounts, reply } => {
                let mut out = Vec::new();
                for instrument in self.engine.instruments() {
                    let Some(book) = self.engine.book(instrument.id) else { continue };
                    for side in [crate::types::Side::Buy, crate::types::Side::Sell] {
                        out.extend(
                            book.orders(side)
                                .filter(|o| accounts.contains(&o.account))
                                .map(|o| (instrument.id, *o)),
                        );
                    }
                }
                let _ = reply.send(out);
            }
        }
    }

    /// Durable shards: publish the journal position and hand a snapshot over when due
    /// (skipped, and retried after the next batch, while the previous one is being written).
    fn after_batch(&mut self) {
        let Some(d) = &mut self.durable else { return };
        d.stats.applied_seq.store(d.applied_seq, Ordering::Relaxed);
        if d.snapshot_every == 0
            || d.applied_seq < d.last_snapshot_seq + d.snapshot_every
            || d.snapshots.is_full()
        {
            return;
        }
        let bytes = crate::snapshot::encode_snapshot(
            &self.engine,
            d.shard,
            d.applied_seq,
            self.stamper.last().0,
        );
        let job = SnapshotJob { seq: d.applied_seq, bytes };
        if d.snapshots.try_send(job).is_ok() {
            d.last_snapshot_seq = d.applied_seq;
        }
    }

    pub(super) fn run(mut self) -> Engine {
        let mut batches = 0u64;
        'outer: while let Some(first) = self.wait() {
            let mut running = self.handle(first);
            let mut handled = 1;
            while running && handled < self.batch_max {
                match self.rx.try_recv() {
                    Ok(request) => {
                        running = self.handle(request);
                        handled += 1;
                    }
                    Err(_) => break,
                }
            }
            // Balances first: whoever sees this batch's reports reads balances including them.
            let board = &self.board;
            self.engine.take_changed_balances(|a, row, p| board.write(a, row, p));
            self.writer.publish();
            batches += 1;
            self.stats.store(&self.engine.counters(), batches);
            self.after_batch();
            self.tap();
            if let Some(hook) = &self.on_publish {
                hook();
            }
            if !running {
                break 'outer;
            }
        }
        self.writer.publish();
        self.engine
    }
}
