//! What travels between the engine node and the gateway nodes, byte for byte.
//!
//! Every subject's payload starts with a version byte. Commands travel framed exactly as
//! the journal frames them (`tickgate_engine::journal::encode_record`: length, CRC32C,
//! sequence, timestamp, command), so a gateway checks every one it applies.
//!
//! ```text
//! commands batch  : u8 version | u8 flags | u64 epoch | u64 run start | u32 shard | u64 last seq | records...
//!                   (run start: the last sequence the engine node's run recovered)
//!                   (flags bit 0: TOO_OLD, a replay reply whose start is no longer kept)
//! replay request  : u64 first seq wanted
//! answer piece    : u8 version | u8 status (0 ok) | u64 total bytes | a piece of the
//!                   answer (a snapshot, a history, the market, the sessions), or UTF-8
//!                   error text (the pieces go, in order, to the request's reply subject:
//!                   an answer may exceed NATS' max_payload)
//! submit request  : u8 version | u64 deadline (ns, the gateway's clock) | one record
//!                   (sequence and timestamp 0: the engine's to set)
//! submit reply    : u8 version | u8 code ([`SubmitCode`])
//! ids reply       : u8 version | u64 first id | u64 count
//! info reply      : JSON {"shards", "epoch", "node"}
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use tickgate_engine::binary::ByteReader;
use tickgate_engine::journal::{decode_records, encode_record, Record};
use tickgate_engine::runtime::SubmitError;

use super::route::RouteError;
use tickgate_engine::{Command, CommandKind, OrderId, UnixNanos};

/// Version byte of every payload this build writes and reads.
pub const VERSION: u8 = 1;
/// Flag of a replay reply whose first wanted command is no longer kept.
pub const TOO_OLD: u8 = 1;
/// Bytes before a batch's records.
pub const BATCH_HEADER_BYTES: usize = 1 + 1 + 8 + 8 + 4 + 8;

/// A batch of one shard's commands, or a heartbeat (no records) saying how far it is.
#[derive(Debug)]
pub struct Batch {
    /// Flags ([`TOO_OLD`]).
    pub flags: u8,
    /// The engine node's run: changes when it restarts.
    pub epoch: u64,
    /// The last sequence of this shard the run started with (what it recovered).
    pub run_start: u64,
    /// The shard.
    pub shard: u32,
    /// The last sequence the engine node had applied when it sent this.
    pub last_seq: u64,
    /// The commands, consecutive.
    pub records: Vec<Record>,
}

/// Which run of the engine node, and which of its shards, a batch comes from.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    /// The run ([`Batch::epoch`]).
    pub epoch: u64,
    /// Its start ([`Batch::run_start`]).
    pub run_start: u64,
    /// The shard.
    pub shard: u32,
}

/// A batch's bytes: the header, then the records in `body`.
pub fn batch_header(flags: u8, origin: Origin, last_seq: u64, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
    out.put_u8(VERSION);
    out.put_u8(flags);
    out.put_u64_le(origin.epoch);
    out.put_u64_le(origin.run_start);
    out.put_u32_le(origin.shard);
    out.put_u64_le(last_seq);
    out.put_slice(body);
    out.freeze()
}

/// Decodes a batch. `Err`: what is wrong with it.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, String> {
    let mut r = ByteReader::new(payload);
    let short = |_| "batch header cut short".to_string();
    let version = r.u8().map_err(short)?;
    if version != VERSION {
        return Err(format!("batch version {version}, this build reads {VERSION}"));
    }
    let flags = r.u8().map_err(short)?;
    let epoch = r.u64().map_err(short)?;
    let run_start = r.u64().map_err(short)?;
    let shard = r.u32().map_err(short)?;
    let last_seq = r.u64().map_err(short)?;
    let records = decode_records(&payload[BATCH_HEADER_BYTES..])?;
    if records.last().is_some_and(|l| l.seq > last_seq) || run_start > last_seq {
        return Err("a batch beyond the sequence it announces".into());
    }
    Ok(Batch { flags, epoch, run_start, shard, last_seq, records })
}

/// An order-entry command as a gateway sends it, to be refused past `deadline` (the
/// gateway no longer waits for it then; clocks of the nodes in step).
pub fn submit_request(kind: CommandKind, deadline: UnixNanos) -> Bytes {
    let mut out = vec![VERSION];
    out.extend_from_slice(&deadline.0.to_le_bytes());
    encode_record(0, &Command { ts: UnixNanos(0), kind }, &mut out);
    Bytes::from(out)
}

/// The command of a submit request and its deadline.
pub fn decode_submit(payload: &[u8]) -> Result<(CommandKind, u64), String> {
    match payload.split_first() {
        Some((&VERSION, rest)) if rest.len() >= 8 => {
            let (deadline, rest) = rest.split_at(8);
            let mut r = ByteReader::new(deadline);
            let deadline = r.u64().map_err(|_| "a deadline cut short".to_string())?;
            let records = decode_records(rest)?;
            match records.as_slice() {
                [one] => Ok((one.command.kind, deadline)),
                _ => Err(format!("{} commands in a submit request, not one", records.len())),
            }
        }
        Some((&VERSION, _)) => Err("a submit request cut short".into()),
        Some((v, _)) => Err(format!("submit version {v}, this build reads {VERSION}")),
        None => Err("empty submit request".into()),
    }
}

/// The instrument a command is about (`None`: a transfer).
pub fn instrument_of(kind: CommandKind) -> Option<tickgate_engine::InstrumentId> {
    Command { ts: UnixNanos(0), kind }.instrument()
}

/// The engine node's answer to a submit: queued, or why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SubmitCode {
    /// Queued on the engine (its reports follow on the commands subject).
    Queued = 0,
    /// The engine's queue is full.
    QueueFull = 1,
    /// The engine's journal failed.
    JournalFailed = 2,
    /// The engine is stopping.
    Stopped = 3,
    /// No shard owns the instrument.
    UnknownInstrument = 4,
    /// Not a command this engine node takes.
    BadRequest = 5,
    /// Arrived past its deadline: not queued.
    Expired = 6,
    /// A new order whose idempotency key another order holds: not queued.
    KeyReused = 7,
    /// A retry of a keyed order another gateway placed (same key, same order): not
    /// queued; the reply also names that order and when it was placed (see
    /// [`repeat_reply`]).
    Repeat = 8,
}

/// The reply to a submit that repeats a keyed order placed through another gateway: its
/// order id and the engine time of its claim.
pub fn repeat_reply(order: OrderId, at: UnixNanos) -> Bytes {
    let mut out = BytesMut::with_capacity(18);
    out.put_u8(VERSION);
    out.put_u8(SubmitCode::Repeat as u8);
    out.put_u64_le(order.0);
    out.put_u64_le(at.0);
    out.freeze()
}

impl SubmitCode {
    /// The reply's bytes.
    pub fn reply(self) -> Bytes {
        Bytes::from(vec![VERSION, self as u8])
    }

    /// The code of a submit's outcome on the engine node.
    pub fn of(result: Result<(), SubmitError>) -> SubmitCode {
        match result {
            Ok(()) => SubmitCode::Queued,
            Err(SubmitError::QueueFull) => SubmitCode::QueueFull,
            Err(SubmitError::JournalFailed) => SubmitCode::JournalFailed,
            Err(SubmitError::UnknownInstrument) => SubmitCode::UnknownInstrument,
            Err(_) => SubmitCode::Stopped,
        }
    }

    /// What a gateway makes of a reply.
    pub fn decode(payload: &[u8]) -> Result<(), RouteError> {
        let refused = |e| Err(RouteError::Refused(e));
        let unreachable = |why: &str| Err(RouteError::Unreachable(why.into()));
        match payload {
            [VERSION, 0] => Ok(()),
            [VERSION, 1] => refused(SubmitError::QueueFull),
            [VERSION, 2] => refused(SubmitError::JournalFailed),
            [VERSION, 3] => refused(SubmitError::Stopped),
            [VERSION, 4] => refused(SubmitError::UnknownInstrument),
            [VERSION, 5] => unreachable("the engine node refused the request as malformed"),
            [VERSION, 6] => unreachable("the request reached the engine node too late; not queued"),
            [VERSION, 7] => Err(RouteError::KeyReused),
            [VERSION, 8, rest @ ..] if rest.len() == 16 => {
                let word = |at: usize| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(&rest[at..at + 8]);
                    u64::from_le_bytes(bytes)
                };
                Err(RouteError::Repeat(OrderId(word(0)), UnixNanos(word(8))))
            }
            _ => unreachable("not a submit reply"),
        }
    }
}

/// A block of order ids.
pub fn ids_reply(first: u64, count: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(17);
    out.put_u8(VERSION);
    out.put_u64_le(first);
    out.put_u64_le(count);
    out.freeze()
}

/// The block of order ids in a reply.
pub fn decode_ids(payload: &[u8]) -> Result<std::ops::Range<u64>, String> {
    let mut r = ByteReader::new(payload);
    let bad = |_| "ids reply cut short".to_string();
    if r.u8().map_err(bad)? != VERSION {
        return Err("ids reply of another version".into());
    }
    let first = r.u64().map_err(bad)?;
    let count = r.u64().map_err(bad)?;
    Ok(first..first.saturating_add(count))
}

/// An answer (a snapshot, a history...) as pieces of at most `piece` bytes each (one, saying so, for an error).
pub fn answer_pieces(result: Result<Vec<u8>, String>, piece: usize) -> Vec<Bytes> {
    let (status, body) = match result {
        Ok(bytes) => (0, bytes),
        Err(e) => (1, e.into_bytes()),
    };
    let total = body.len() as u64;
    let frame = |chunk: &[u8]| {
        let mut out = BytesMut::with_capacity(10 + chunk.len());
        out.put_u8(VERSION);
        out.put_u8(status);
        out.put_u64_le(total);
        out.put_slice(chunk);
        out.freeze()
    };
    if body.is_empty() {
        return vec![frame(&[])];
    }
    body.chunks(piece.max(1)).map(frame).collect()
}

/// Largest answer in pieces accepted (a snapshot of a full engine is far smaller).
pub const PIECES_TOTAL_MAX: u64 = 1 << 30;

/// Collects the pieces of one answer.
#[derive(Debug, Default)]
pub struct Pieces {
    bytes: Vec<u8>,
    total: Option<u64>,
}

impl Pieces {
    /// Adds the next piece. `Ok(Some(bytes))`: the snapshot is whole; `Err`: the engine
    /// node's error, or a piece that does not belong.
    pub fn add(&mut self, payload: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let mut r = ByteReader::new(payload);
        let bad = |_| "a snapshot piece cut short".to_string();
        if r.u8().map_err(bad)? != VERSION {
            return Err("a snapshot piece of another version".into());
        }
        let status = r.u8().map_err(bad)?;
        let total = r.u64().map_err(bad)?;
        if total > PIECES_TOTAL_MAX {
            return Err(format!("an answer of {total} bytes announced"));
        }
        let rest = &payload[10..];
        if status != 0 {
            return Err(String::from_utf8_lossy(rest).into_owned());
        }
        if *self.total.get_or_insert(total) != total {
            return Err("snapshot pieces of two snapshots".into());
        }
        self.bytes.extend_from_slice(rest);
        match (self.bytes.len() as u64).cmp(&total) {
            std::cmp::Ordering::Less => Ok(None),
            std::cmp::Ordering::Equal => Ok(Some(std::mem::take(&mut self.bytes))),
            std::cmp::Ordering::Greater => Err("more snapshot bytes than announced".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickgate_engine::{AccountId, CancelOrder, InstrumentId, OrderId};

    fn cancel(id: u64) -> CommandKind {
        CommandKind::Cancel(CancelOrder {
            order_id: OrderId(id),
            account: AccountId(3),
            instrument: InstrumentId(1),
        })
    }

    #[test]
    fn a_batch_round_trips_and_damage_is_refused() {
        let mut body = Vec::new();
        for seq in 7..10 {
            encode_record(seq, &Command { ts: UnixNanos(100 + seq), kind: cancel(seq) }, &mut body);
        }
        let origin = Origin { epoch: 42, run_start: 5, shard: 1 };
        let bytes = batch_header(0, origin, 9, &body);
        let b = decode_batch(&bytes).expect("valid");
        assert_eq!((b.epoch, b.run_start, b.shard, b.last_seq, b.records.len()), (42, 5, 1, 9, 3));
        assert_eq!(b.records[2].seq, 9);
        assert_eq!(b.records[2].command.ts, UnixNanos(109));
        let mut damaged = bytes.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(decode_batch(&damaged).unwrap_err().contains("checksum"));
        assert!(decode_batch(&bytes[..BATCH_HEADER_BYTES - 1]).is_err());
        assert!(decode_batch(&bytes[..bytes.len() - 3]).is_err());
        let heartbeat = batch_header(0, origin, 9, &[]);
        assert!(decode_batch(&heartbeat).expect("valid").records.is_empty());
        assert!(decode_batch(&batch_header(0, origin, 8, &body)).is_err(), "records past it");
    }

    #[test]
    fn submit_requests_and_replies_round_trip() {
        let request = submit_request(cancel(5), UnixNanos(77));
        assert_eq!(decode_submit(&request), Ok((cancel(5), 77)));
        assert!(decode_submit(&request[..request.len() - 1]).is_err());
        assert!(decode_submit(&[]).is_err());
        assert!(SubmitCode::decode(&SubmitCode::Queued.reply()).is_ok());
        for code in [SubmitCode::QueueFull, SubmitCode::Stopped] {
            match SubmitCode::decode(&code.reply()) {
                Err(RouteError::Refused(e)) => assert_eq!(SubmitCode::of(Err(e)), code),
                other => panic!("{code:?}: {other:?}"),
            }
        }
        for code in [SubmitCode::BadRequest, SubmitCode::Expired] {
            let decoded = SubmitCode::decode(&code.reply());
            assert!(matches!(decoded, Err(RouteError::Unreachable(_))), "{code:?}: {decoded:?}");
        }
        let decoded = SubmitCode::decode(&SubmitCode::KeyReused.reply());
        assert!(matches!(decoded, Err(RouteError::KeyReused)), "{decoded:?}");
        let decoded = SubmitCode::decode(&repeat_reply(OrderId(77), UnixNanos(1_234)));
        assert!(
            matches!(decoded, Err(RouteError::Repeat(OrderId(77), UnixNanos(1_234)))),
            "{decoded:?}"
        );
        let short = SubmitCode::decode(&repeat_reply(OrderId(77), UnixNanos(1))[..10]);
        assert!(matches!(short, Err(RouteError::Unreachable(_))), "{short:?}");
        assert_eq!(decode_ids(&ids_reply(100, 5)), Ok(100..105));
    }

    #[test]
    fn a_snapshot_travels_in_pieces_and_is_put_back_together() {
        let snapshot: Vec<u8> = (0..1_000u32).map(|i| i as u8).collect();
        let pieces = answer_pieces(Ok(snapshot.clone()), 300);
        assert_eq!(pieces.len(), 4);
        let mut collect = Pieces::default();
        for p in &pieces[..3] {
            assert_eq!(collect.add(p), Ok(None));
        }
        assert_eq!(collect.add(&pieces[3]), Ok(Some(snapshot)));
        let error = answer_pieces(Err("no".into()), 300);
        assert_eq!(Pieces::default().add(&error[0]), Err("no".to_string()));
        let mut twice = Pieces::default();
        assert_eq!(twice.add(&pieces[0]), Ok(None));
        let other = answer_pieces(Ok(vec![0; 10]), 300);
        assert!(twice.add(&other[0]).is_err(), "a piece of another snapshot");
    }
}
