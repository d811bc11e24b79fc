//! [`EngineHandle`]: submitting commands, asking questions, reading events.

use super::*;

impl EngineHandle {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.shards.len()
    }

    /// The shard that owns `instrument`.
    pub fn shard_of(&self, instrument: InstrumentId) -> Option<usize> {
        ((instrument.0 as usize) < self.shared.instruments.len())
            .then(|| instrument.shard(self.shared.shards.len()))
    }

    /// The instrument table.
    pub fn instruments(&self) -> &[Instrument] {
        &self.shared.instruments
    }

    /// The asset table.
    pub fn assets(&self) -> &[Asset] {
        &self.shared.assets
    }

    /// Looks an instrument up by symbol.
    pub fn instrument_by_symbol(&self, symbol: &str) -> Option<&Instrument> {
        self.shared.instruments.iter().find(|i| i.spec.symbol == symbol)
    }

    /// The clock commands are stamped with; everything around the engine that stamps
    /// or times out takes it too.
    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// A fresh, engine-wide unique order id.
    pub fn allocate_order_id(&self) -> OrderId {
        OrderId(self.shared.next_order_id.fetch_add(1, Ordering::Relaxed))
    }

    /// `n` fresh order ids at once (for high-rate submitters such as the synthetic feed).
    pub fn reserve_order_ids(&self, n: u64) -> Range<u64> {
        let start = self.shared.next_order_id.fetch_add(n, Ordering::Relaxed);
        start..start + n
    }

    fn send(&self, shard: usize, request: Request) -> Result<(), SubmitError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(SubmitError::Stopped);
        }
        if self.shared.replica && matches!(request, Request::Command(_)) {
            return Err(SubmitError::Replica);
        }
        let link = self.shared.shards.get(shard).ok_or(SubmitError::UnknownShard)?;
        if link.failure.is_failed() {
            return Err(SubmitError::JournalFailed);
        }
        link.tx.try_send(request).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::QueueFull,
            TrySendError::Disconnected(_) if link.failure.is_failed() => SubmitError::JournalFailed,
            TrySendError::Disconnected(_) => SubmitError::Stopped,
        })
    }

    /// Queues a command on the shard that owns its instrument. Transfers go to shard 0;
    /// use [`EngineHandle::submit_transfer`] to fund another shard's ledger.
    pub fn submit(&self, kind: CommandKind) -> Result<(), SubmitError> {
        self.submit_stamped(kind, UnixNanos(0))
    }

    /// [`EngineHandle::submit`] for a command that asks for its stamp (a replayed
    /// recording's, so that the replay reaches the recorded state: idempotency keys
    /// remember when they were used). It gets `ts` if that comes after every stamp the
    /// shard has given, else the shard's next stamp as any command does. `0`: no wish.
    pub fn submit_stamped(&self, kind: CommandKind, ts: UnixNanos) -> Result<(), SubmitError> {
        let command = Command { ts, kind };
        let shard = match command.instrument() {
            Some(i) => self.shard_of(i).ok_or(SubmitError::UnknownInstrument)?,
            None => 0,
        };
        self.send(shard, Request::Command(command))
    }

    /// Queues a transfer on a given shard's ledger.
    pub fn submit_transfer(&self, shard: usize, transfer: Transfer) -> Result<(), SubmitError> {
        let command = Command { ts: UnixNanos(0), kind: CommandKind::Transfer(transfer) };
        self.send(shard, Request::Command(command))
    }

    /// Whether this engine is a replica ([`EngineRuntime::start_replica`]).
    pub fn is_replica(&self) -> bool {
        self.shared.replica
    }

    /// Applies a primary's commands on a replica's `shard`, stamped and in the primary's
    /// order. Waits for room in the queue rather than drop any: a replica that skipped a
    /// command would no longer be one.
    pub fn replicate(&self, shard: usize, commands: Vec<Command>) -> Result<(), SubmitError> {
        if !self.shared.replica {
            return Err(SubmitError::NotReplica);
        }
        let link = self.shared.shards.get(shard).ok_or(SubmitError::UnknownShard)?;
        link.tx.send(Request::Replicated(commands)).map_err(|_| SubmitError::Stopped)
    }

    /// `shard`'s whole state as snapshot bytes ([`crate::snapshot`]), taken between two
    /// commands; its header carries the sequence of the last command it includes, the
    /// first a replica starting from it must apply after it.
    pub fn snapshot(&self, shard: usize) -> Result<Vec<u8>, SubmitError> {
        self.ask(shard, |reply| Query::Snapshot { reply })
    }

    fn ask<T>(
        &self,
        shard: usize,
        query: impl FnOnce(Sender<T>) -> Query,
    ) -> Result<T, SubmitError> {
        let (tx, rx) = bounded(1);
        self.send(shard, Request::Query(query(tx)))?;
        rx.recv_timeout(self.shared.ask_timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => SubmitError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => SubmitError::Stopped,
        })
    }

    /// Snapshot of the top `depth` levels, valid at the sequence it carries. Blocks until
    /// the shard answers (between two commands).
    pub fn book_snapshot(
        &self,
        instrument: InstrumentId,
        depth: usize,
    ) -> Result<BookSnapshot, SubmitError> {
        let shard = self.shard_of(instrument).ok_or(SubmitError::UnknownInstrument)?;
        self.ask(shard, |reply| Query::Book { instrument, depth, reply })?
            .ok_or(SubmitError::UnknownInstrument)
    }

    /// The last sequence of each of `instrument`'s public channels (trades, book, best
    /// bid/offer), answered after every command queued before the call.
    pub fn channel_seqs(
        &self,
        instrument: InstrumentId,
    ) -> Result<crate::engine::ChannelSeqs, SubmitError> {
        let shard = self.shard_of(instrument).ok_or(SubmitError::UnknownInstrument)?;
        self.ask(shard, |reply| Query::Seqs { instrument, reply })?
            .ok_or(SubmitError::UnknownInstrument)
    }

    /// Balances of `account` per asset on `shard`'s ledger; `None` for an unknown account.
    /// Answered in order with the commands queued before it (for lock-free reads of
    /// acknowledged balances, see [`EngineHandle::published_account`]).
    pub fn balances(
        &self,
        shard: usize,
        account: AccountId,
    ) -> Result<Option<Vec<Balance>>, SubmitError> {
        self.ask(shard, |reply| Query::Balances { account, reply })
    }

    /// The last sequence of each account's execution reports on `shard` (`None` for an
    /// unknown account), answered after every command queued before the call.
    pub fn exec_seqs(
        &self,
        shard: usize,
        accounts: Vec<AccountId>,
    ) -> Result<Vec<Option<Seq>>, SubmitError> {
        self.ask(shard, |reply| Query::ExecSeqs { accounts, reply })
    }

    /// State digest, counters and journal position of `shard`, taken between two commands.
    pub fn digest(&self, shard: usize) -> Result<ShardDigest, SubmitError> {
        self.ask(shard, |reply| Query::Digest { reply })
    }

    /// Whether trading in `instrument` is halted, answered after every command queued
    /// before the call.
    pub fn is_halted(&self, instrument: InstrumentId) -> Result<bool, SubmitError> {
        let shard = self.shard_of(instrument).ok_or(SubmitError::UnknownInstrument)?;
        self.ask(shard, |reply| Query::Halted { instrument, reply })?
            .ok_or(SubmitError::UnknownInstrument)
    }

    /// Every resting order of `accounts` on `shard`, per instrument in priority order.
    pub fn open_orders(
        &self,
        shard: usize,
        accounts: Vec<AccountId>,
    ) -> Result<Vec<(InstrumentId, RestingOrder)>, SubmitError> {
        self.ask(shard, |reply| Query::OpenOrders { accounts, reply })
    }

    /// The idempotency keys `shard` remembers for `accounts` (accounts in id order, each
    /// oldest first), answered after every command queued before the call.
    pub fn key_records(
        &self,
        shard: usize,
        accounts: Vec<AccountId>,
    ) -> Result<Vec<(AccountId, KeyRecord)>, SubmitError> {
        self.ask(shard, |reply| Query::Keys { accounts, reply })
    }

    /// The record of one idempotency key of `account` on `shard`, if remembered, answered
    /// after every command queued before the call (one map lookup on the engine thread).
    pub fn key_record(
        &self,
        shard: usize,
        account: AccountId,
        key: IdempotencyKey,
    ) -> Result<Option<KeyRecord>, SubmitError> {
        self.ask(shard, |reply| Query::Key { account, key, reply })
    }

    /// Balances and positions of `account` on `shard` as of the last published batch,
    /// read lock-free (the engine thread is not involved); `None` for an unknown account
    /// or shard.
    pub fn published_account(&self, shard: usize, account: AccountId) -> Option<PublishedAccount> {
        self.shared.shards.get(shard)?.board.read(account)
    }

    /// Journal counters of `shard` (`None` without durability).
    pub fn journal_stats(&self, shard: usize) -> Option<&Arc<JournalStats>> {
        self.shared.shards.get(shard)?.journal.as_ref()
    }

    /// The first journal failure of any shard (the shard then takes no more commands).
    pub fn durability_failure(&self) -> Option<String> {
        self.shared.shards.iter().find_map(|l| l.failure.message())
    }

    /// The first snapshot or pruning failure of any shard: nothing is lost (the journal
    /// keeps everything) and the shard keeps running, but an operator should look.
    pub fn snapshot_warning(&self) -> Option<String> {
        self.shared.shards.iter().find_map(|l| l.snapshot_warning.message())
    }

    /// A reader of `shard`'s events, starting at the next event.
    pub fn reader(&self, shard: usize) -> Option<RingReader> {
        self.shared.shards.get(shard).map(|l| l.ring.reader())
    }

    /// `shard`'s event ring.
    pub fn ring(&self, shard: usize) -> Option<&Arc<EventRing>> {
        self.shared.shards.get(shard).map(|l| &l.ring)
    }

    /// Counters summed over every shard (updated once per batch).
    pub fn counters(&self) -> EngineCounters {
        self.shared.shards.iter().map(|l| l.stats.load()).fold(EngineCounters::default(), |a, b| {
            EngineCounters {
                commands: a.commands + b.commands,
                events: a.events + b.events,
                trades: a.trades + b.trades,
                rejects: a.rejects + b.rejects,
            }
        })
    }

    /// Commands waiting in `shard`'s queue.
    pub fn queue_len(&self, shard: usize) -> usize {
        self.shared.shards.get(shard).map_or(0, |l| l.tx.len())
    }

    /// Commands `shard`'s queue holds at most.
    pub fn queue_capacity(&self, shard: usize) -> usize {
        self.shared.shards.get(shard).and_then(|l| l.tx.capacity()).unwrap_or(0)
    }
}
