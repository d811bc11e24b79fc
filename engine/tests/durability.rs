//! Durable shards: journal, snapshots, pruning and recovery through the real runtime
//! threads and files, and the from-scratch replay check against the live engine.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use tickgate_engine::durable::{self, DurabilityConfig, Recovery};
use tickgate_engine::journal::{list_segments, read_segment, SyncMode};
use tickgate_engine::runtime::{EngineHandle, EngineRuntime, RuntimeConfig, StartError};
use tickgate_engine::snapshot::list_snapshots;
use tickgate_engine::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tickgate-durable-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn spec() -> EngineSpec {
    EngineSpec { accounts_max: 16, orders_per_book_max: 1 << 16, ..EngineSpec::default() }
}

fn config(dir: &Path, shards: usize, snapshot_every: u64) -> RuntimeConfig {
    let mut d = DurabilityConfig::new(dir);
    d.segment_bytes = 16 << 10;
    d.snapshot_every = snapshot_every;
    d.mode = SyncMode::Fsync;
    RuntimeConfig {
        spec: spec(),
        shards,
        ring_capacity: 1 << 17,
        durability: Some(d),
        ..RuntimeConfig::default()
    }
}

/// A small deterministic mix of funding, orders that cross, cancels and replaces.
fn drive(handle: &EngineHandle, seed: u64, n: u64) {
    let mut x = seed | 1;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for shard in 0..handle.shards() {
        for account in 1..6 {
            for asset in 0..handle.assets().len() {
                let t = Transfer {
                    account: AccountId(account),
                    asset: AssetId(asset as u16),
                    amount: Amount(1 << 40),
                    request_id: 0,
                };
                handle.submit_transfer(shard, t).expect("queued");
            }
        }
    }
    let mut placed = Vec::new();
    for i in 0..n {
        if i % 200 == 0 {
            // Wait for the engine now and then, so the journal sees many small batches
            // (and rotates segments) rather than one big one.
            common::retrying(|| handle.digest(0));
        }
        let r = rand();
        let instrument = InstrumentId((r % 4) as u32);
        let account = AccountId(1 + (r >> 8) as u32 % 5);
        let kind = match (r >> 16) % 10 {
            0..=6 => {
                let order_id = handle.allocate_order_id();
                placed.push((order_id, account, instrument));
                CommandKind::New(NewOrder {
                    key: None,
                    order_id,
                    client_order_id: r >> 40,
                    account,
                    instrument,
                    side: if (r >> 20) % 2 == 0 { Side::Buy } else { Side::Sell },
                    order_type: OrderType::Limit,
                    price: Price(1_000 + ((r >> 24) % 21) as i64 - 10),
                    qty: Qty(1 + ((r >> 32) % 50) as i64),
                    stp: StpMode::CancelResting,
                })
            }
            7 | 8 if !placed.is_empty() => {
                let (order_id, account, instrument) = placed[(r >> 24) as usize % placed.len()];
                CommandKind::Cancel(CancelOrder { order_id, account, instrument })
            }
            _ if !placed.is_empty() => {
                let (order_id, account, instrument) = placed[(r >> 24) as usize % placed.len()];
                CommandKind::Replace(ReplaceOrder {
                    order_id,
                    account,
                    instrument,
                    price: Price(1_000 + ((r >> 28) % 21) as i64 - 10),
                    qty: match Qty(1 + ((r >> 36) % 30) as i64) {
                        q if r >> 42 & 1 == 0 => ReplaceQty::Open(q),
                        q => ReplaceQty::Total(q),
                    },
                })
            }
            _ => continue,
        };
        common::submit_retrying(handle, kind);
    }
}

fn digests(handle: &EngineHandle) -> Vec<(u64, u64)> {
    (0..handle.shards())
        .map(|s| {
            let d = common::retrying(|| handle.digest(s));
            (d.state, d.journal_seq)
        })
        .collect()
}

#[test]
fn restart_recovers_state_from_snapshot_and_journal_and_continues() {
    let tmp = TempDir::new("restart");
    let runtime = EngineRuntime::start(config(&tmp.0, 2, 700)).expect("fresh start");
    assert!(runtime.recoveries().iter().all(Recovery::is_fresh));
    let handle = runtime.handle();
    drive(&handle, 7, 4_000);
    let before = digests(&handle);
    let max_id = handle.allocate_order_id().0; // one above every id used
    assert!(before.iter().all(|&(_, seq)| seq > 1_000), "{before:?}");
    let stats = handle.journal_stats(0).expect("durable");
    let syncs = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
    let records = stats.records.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(records, before[0].1);
    assert!(syncs >= 1 && syncs <= records, "group commit: {syncs} syncs for {records} records");
    let engines = runtime.shutdown();
    assert_eq!(engines[0].state_digest(), before[0].0);

    // Snapshots were taken and made old segments unnecessary.
    let shard0 = tmp.0.join("shard-0");
    let snapshots = list_snapshots(&shard0).unwrap();
    assert!(!snapshots.is_empty() && snapshots.len() <= 2, "{snapshots:?}");
    let segments = list_segments(&shard0).unwrap();
    assert!(segments[0].0 > 1, "old segments pruned: {segments:?}");

    // A crash mid-write leaves half a record after the last batch, in the space the
    // writer had zeroed ahead: it and everything after it is the torn tail.
    let (_, last) = segments.last().unwrap().clone();
    let end = read_segment(&last, 0, None, true, |_| {}).unwrap().valid_bytes as usize;
    let mut bytes = fs::read(&last).unwrap();
    assert!(bytes.len() > end, "the segment ends in zeroed space");
    bytes[end..end + 11].copy_from_slice(&[60, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]);
    let torn = (bytes.len() - end) as u64;
    fs::write(&last, &bytes).unwrap();

    let runtime = EngineRuntime::start(config(&tmp.0, 2, 700)).expect("recovers");
    let r = &runtime.recoveries()[0];
    assert!(r.snapshot.is_some() && r.replayed > 0, "{r:?}");
    assert_eq!(r.torn.as_ref().map(|(_, n, written)| (*n, *written)), Some((torn, 11)));
    let handle = runtime.handle();
    assert_eq!(digests(&handle), before);
    assert!(handle.allocate_order_id().0 >= max_id, "order ids continue above the journal's");

    // More commands after the restart continue the journal's sequence.
    drive(&handle, 8, 500);
    let after = digests(&handle);
    assert!(after[0].1 > before[0].1);
    runtime.shutdown();

    // An independent replay of the files reaches the same state, twice the same way.
    let a = durable::verify(&tmp.0, &spec(), 2).expect("verifies");
    let b = durable::verify(&tmp.0, &spec(), 2).expect("verifies");
    for (s, v) in a.shards.iter().enumerate() {
        assert_eq!((v.state_digest, v.last_seq), after[s], "shard {s}");
        assert_eq!(
            (v.state_digest, v.event_digest),
            (b.shards[s].state_digest, b.shards[s].event_digest)
        );
    }
}

#[test]
fn replaying_the_journal_reproduces_the_live_event_stream() {
    let tmp = TempDir::new("events");
    let runtime = EngineRuntime::start(config(&tmp.0, 1, 0)).expect("fresh start");
    let handle = runtime.handle();
    let mut reader = handle.ring(0).unwrap().reader_from_oldest();
    drive(&handle, 11, 3_000);
    let live_state = common::retrying(|| handle.digest(0)).state;
    let mut events = Vec::new();
    reader.read(&mut events, usize::MAX);
    let mut live = EventDigest::default();
    events.iter().for_each(|e| live.add(e));
    runtime.shutdown();
    let v = durable::verify(&tmp.0, &spec(), 1).expect("verifies");
    let v = &v.shards[0];
    assert_eq!(v.from_snapshot, None);
    assert_eq!(v.events, live.count);
    assert_eq!(v.event_digest, live.value(), "replayed events equal the live ones");
    assert_eq!(v.state_digest, live_state);
    assert_eq!(v.transfers.as_ref(), Some(&v.asset_totals), "money is conserved");
    assert!(v.asset_totals[0] > 0);
}

#[test]
fn damage_in_the_middle_of_the_journal_refuses_to_start() {
    let tmp = TempDir::new("corrupt");
    let runtime = EngineRuntime::start(config(&tmp.0, 1, 0)).expect("fresh start");
    drive(&runtime.handle(), 3, 1_500);
    runtime.shutdown();
    let segments = list_segments(&tmp.0.join("shard-0")).unwrap();
    assert!(segments.len() > 2);
    let (_, victim) = &segments[1];
    let mut bytes = fs::read(victim).unwrap();
    bytes[200] ^= 0x10;
    fs::write(victim, &bytes).unwrap();
    let err = match EngineRuntime::start(config(&tmp.0, 1, 0)) {
        Err(StartError::Journal(e)) => e.to_string(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("started on a damaged journal"),
    };
    assert!(err.contains(victim.to_str().unwrap()), "{err}");
    assert!(err.contains("offset"), "{err}");
    // Verification refuses the same way.
    assert!(durable::verify(&tmp.0, &spec(), 1).is_err());
}

#[test]
fn a_second_runtime_cannot_open_the_same_data_directory() {
    let tmp = TempDir::new("lock");
    let first = EngineRuntime::start(config(&tmp.0, 1, 0)).expect("fresh start");
    match EngineRuntime::start(config(&tmp.0, 1, 0)) {
        Err(StartError::Locked(dir)) => assert_eq!(dir, tmp.0),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("two runtimes on one journal"),
    }
    first.shutdown();
    let again = EngineRuntime::start(config(&tmp.0, 1, 0)).expect("lock released on shutdown");
    again.shutdown();
}

#[test]
fn snapshots_never_wait_and_pruning_and_recovery_follow_the_slowest_consumer() {
    use std::sync::{Arc, Mutex};
    use tickgate_engine::snapshot::snapshot_last_ts;

    let tmp = TempDir::new("retention");
    let shard_dir = tmp.0.join("shard-0");
    // A consumer that has stored nothing: snapshots are still written, but nothing is
    // pruned, since its recovery must replay from the start.
    let retention = Arc::new(Retention::new(1));
    let stuck = retention.register(&[0]);
    let mut c = config(&tmp.0, 1, 500);
    c.retention = Some(Arc::clone(&retention));
    let runtime = EngineRuntime::start(c).expect("fresh start");
    drive(&runtime.handle(), 3, 3_000);
    runtime.shutdown();
    let snapshots = list_snapshots(&shard_dir).unwrap();
    assert!(snapshots.len() >= 3, "snapshots never wait for consumers: {snapshots:?}");
    assert_eq!(list_segments(&shard_dir).unwrap()[0].0, 1, "the journal is kept whole");
    assert_eq!(stuck.stored(0), 0);

    // A consumer that stored up to the second snapshot: recovery starts there (not at the
    // newest), so it sees again every event after its mark.
    let (second_seq, second) = &snapshots[1];
    let floor = snapshot_last_ts(second).unwrap();
    let retention = Arc::new(Retention::new(1));
    let mark = retention.register(&[floor]);
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s = Arc::clone(&seen);
    let mut c = config(&tmp.0, 1, 500);
    c.retention = Some(Arc::clone(&retention));
    c.on_replay = Some(Arc::new(move |_, e: &Event| s.lock().unwrap().push(e.ts().0)));
    let runtime = EngineRuntime::start(c).expect("restart");
    let recovery = &runtime.recoveries()[0];
    assert_eq!(recovery.snapshot.as_ref().map(|(_, seq)| *seq), Some(*second_seq));
    assert!(recovery.retention_warning.is_none());
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(!seen.is_empty() && seen.iter().all(|ts| *ts > floor), "every event after the mark");

    // Once the consumer has caught up, pruning goes back to two snapshots and the journal
    // after the older.
    mark.advance(0, UnixNanos(u64::MAX));
    drive(&runtime.handle(), 5, 1_500);
    runtime.shutdown();
    let snapshots = list_snapshots(&shard_dir).unwrap();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let first_segment = list_segments(&shard_dir).unwrap()[0].0;
    assert!(first_segment > 1 && first_segment <= snapshots[0].0 + 1, "{first_segment}");

    // A consumer older than everything kept: the oldest snapshot is the best there is, and
    // recovery says so.
    let retention = Arc::new(Retention::new(1));
    let _behind = retention.register(&[1]);
    let mut c = config(&tmp.0, 1, 500);
    c.retention = Some(retention);
    let runtime = EngineRuntime::start(c).expect("restart");
    let recovery = &runtime.recoveries()[0];
    assert_eq!(recovery.snapshot.as_ref().map(|(_, seq)| *seq), Some(snapshots[0].0));
    assert!(recovery.retention_warning.as_deref().is_some_and(|w| w.contains("pruned")));
    runtime.shutdown();

    // Every snapshot damaged, the journal before them pruned: the start is refused, and
    // the refusal names the snapshots, not only the gap they leave.
    for (_, path) in list_snapshots(&shard_dir).unwrap() {
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(&path, bytes).unwrap();
    }
    let refused = EngineRuntime::start(config(&tmp.0, 1, 500)).err().map(|e| e.to_string());
    let refused = refused.expect("no snapshot to start from");
    assert!(refused.contains("gap or overlap"), "{refused}");
    assert!(
        refused.contains("passed over as unreadable") && refused.contains("checksum"),
        "{refused}"
    );
}

/// A replica started from a primary's snapshot mid-stream, fed the commands the
/// primary's tap hands over after it (encoded and decoded as they travel), ends in the
/// primary's state and publishes the very events the primary published after the snapshot.
#[test]
fn a_replica_from_a_snapshot_follows_its_primary_event_for_event() {
    use std::sync::{Arc, Mutex};
    use tickgate_engine::journal::{decode_records, encode_record};
    use tickgate_engine::snapshot::decode_snapshot;
    let tmp = TempDir::new("replica");
    let tapped: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = Arc::clone(&tapped);
    let mut primary_config = config(&tmp.0, 2, 0);
    primary_config.on_commands = Some(Arc::new(move |shard, first, commands: &[Command]| {
        if shard == 0 {
            let mut out = sink.lock().unwrap();
            for (i, c) in commands.iter().enumerate() {
                encode_record(first + i as u64, c, &mut out);
            }
        }
    }));
    let primary = EngineRuntime::start(primary_config).expect("fresh start");
    let handle = primary.handle();
    drive(&handle, 5, 1_500);
    let snapshot = handle.snapshot(0).expect("running");
    let mut primary_events = handle.ring(0).unwrap().reader();
    drive(&handle, 6, 1_500);
    let (state, seq) = digests(&handle)[0];

    let mut snapshots = Vec::new();
    for shard in 0..2u32 {
        let bytes = if shard == 0 { snapshot.clone() } else { handle.snapshot(1).unwrap() };
        let owns = move |i: InstrumentId| i.0 % 2 == shard;
        snapshots.push(decode_snapshot(&bytes, shard, &spec(), owns).expect("a snapshot"));
    }
    let from = snapshots[0].seq;
    assert!(from > 0 && from < seq, "taken mid-stream: {from} of {seq}");
    let replica_config =
        RuntimeConfig { spec: spec(), ring_capacity: 1 << 17, ..Default::default() };
    let replica = EngineRuntime::start_replica(replica_config, snapshots).expect("starts");
    let r = replica.handle();
    assert!(r.is_replica());
    assert_eq!(
        r.submit(CommandKind::Status(TradingStatus { instrument: InstrumentId(0), halted: true })),
        Err(runtime::SubmitError::Replica)
    );
    let mut replica_events = r.ring(0).unwrap().reader();
    let records = decode_records(&tapped.lock().unwrap()).expect("well framed");
    assert_eq!(records.first().map(|r| r.seq), Some(1));
    let after: Vec<Command> = records.iter().filter(|r| r.seq > from).map(|r| r.command).collect();
    r.replicate(0, after).expect("replica running");
    assert_eq!(r.digest(0).unwrap().state, state, "same state as the primary");

    let (mut a, mut b) = (Vec::new(), Vec::new());
    primary_events.read(&mut a, usize::MAX);
    replica_events.read(&mut b, usize::MAX);
    // The primary's reader started a little after the snapshot was taken, at most one
    // batch late: compare the replica's tail with everything the primary's reader saw.
    assert!(!a.is_empty() && b.len() >= a.len());
    assert_eq!(&b[b.len() - a.len()..], &a[..], "the same events, byte for byte");
    assert_eq!(handle.snapshot(0).unwrap(), r.snapshot(0).unwrap(), "identical snapshots");
    primary.shutdown();
    replica.shutdown();
}
