//! The journal as a whole: every command kind round trips, rotation, torn tails cut,
//! corruption named, gaps refused.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::command::{
    CancelOrder, CommandKind, NewOrder, OrderType, ReplaceOrder, ReplaceQty, StpMode,
    TradingStatus, Transfer,
};
use crate::idempotency::IdempotencyKey;
use crate::types::{
    AccountId, Amount, AssetId, InstrumentId, OrderId, Price, Qty, Side, UnixNanos,
};

fn cmd(i: u64) -> Command {
    let kind = match i % 5 {
        0 => CommandKind::New(NewOrder {
            key: i.is_multiple_of(10).then_some(IdempotencyKey(u128::MAX - u128::from(i))),
            order_id: OrderId(i),
            client_order_id: i * 7,
            account: AccountId(3),
            instrument: InstrumentId(1),
            side: Side::Sell,
            order_type: OrderType::PostOnly,
            price: Price(-5 + i as i64),
            qty: Qty(100),
            stp: StpMode::CancelBoth,
        }),
        1 => CommandKind::Cancel(CancelOrder {
            order_id: OrderId(i),
            account: AccountId(4),
            instrument: InstrumentId(2),
        }),
        2 => CommandKind::Replace(ReplaceOrder {
            order_id: OrderId(i),
            account: AccountId(5),
            instrument: InstrumentId(0),
            price: Price(77),
            qty: if i % 8 == 2 { ReplaceQty::Open(Qty(3)) } else { ReplaceQty::Total(Qty(3)) },
        }),
        3 => CommandKind::Status(TradingStatus {
            instrument: InstrumentId(4),
            halted: i.is_multiple_of(2),
        }),
        _ => CommandKind::Transfer(Transfer {
            account: AccountId(6),
            asset: AssetId(2),
            amount: Amount(-9),
            request_id: u64::MAX,
        }),
    };
    Command { ts: UnixNanos(1_000 + i), kind }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tickgate-journal-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn write(dir: &Path, n: u64, segment_bytes: u64) {
    let mut w = JournalWriter::open(dir, 0, 1, segment_bytes).unwrap();
    for i in 0..n {
        w.append(&cmd(i));
        if i % 10 == 9 {
            w.commit(true).unwrap();
        }
    }
    w.commit(true).unwrap();
}

/// The batches of a segment, without the zeroed space after them.
fn batches_of(path: &Path) -> Vec<u8> {
    let scan = read_segment(path, 0, None, true, |_| {}).unwrap();
    assert_eq!(scan.torn_bytes, 0);
    let mut bytes = fs::read(path).unwrap();
    assert!(bytes[scan.valid_bytes as usize..].iter().all(|&b| b == 0));
    bytes.truncate(scan.valid_bytes as usize);
    bytes
}

fn read_all(dir: &Path) -> Result<(Vec<Record>, u64), JournalError> {
    let segments = list_segments(dir)?;
    let mut out = Vec::new();
    let mut torn = 0;
    let mut expect = None;
    for (i, (_, path)) in segments.iter().enumerate() {
        let scan = read_segment(path, 0, expect, i + 1 == segments.len(), |r| out.push(r))?;
        torn += scan.torn_bytes;
        expect = Some(out.last().map_or(1, |r: &Record| r.seq + 1));
    }
    Ok((out, torn))
}

#[test]
fn every_command_kind_round_trips() {
    for i in 0..8 {
        let mut buf = Vec::new();
        encode_record(i + 1, &cmd(i), &mut buf);
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(buf.len(), RECORD_HEADER_BYTES + len);
        assert!(len <= PAYLOAD_MAX);
        let r = decode_payload(&buf[RECORD_HEADER_BYTES..]).unwrap();
        assert_eq!(r, Record { seq: i + 1, command: cmd(i) });
    }
    // A truncated or padded payload is not a command.
    let mut buf = Vec::new();
    encode_record(1, &cmd(0), &mut buf);
    assert!(decode_payload(&buf[RECORD_HEADER_BYTES..buf.len() - 1]).is_none());
    buf.push(0);
    assert!(decode_payload(&buf[RECORD_HEADER_BYTES..]).is_none());
}

#[test]
fn write_rotate_and_read_back() {
    let dir = temp_dir("rotate");
    write(&dir, 1000, 8192);
    let segments = list_segments(&dir).unwrap();
    assert!(segments.len() > 3, "{} segments", segments.len());
    assert_eq!(segments[0].0, 1);
    // Every segment, the last one too, ends in space zeroed ahead of its batches.
    for (_, path) in &segments {
        assert!(fs::metadata(path).unwrap().len() > batches_of(path).len() as u64);
    }
    let (records, torn) = read_all(&dir).unwrap();
    assert_eq!(torn, 0);
    assert_eq!(records.len(), 1000);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.command, cmd(i as u64));
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn torn_tail_is_cut_not_fatal() {
    let dir = temp_dir("torn");
    write(&dir, 50, 1 << 20);
    let (_, path) = list_segments(&dir).unwrap().pop().unwrap();
    let full = batches_of(&path);
    // Batches of 10 (one per commit): a cut anywhere in the last batch loses that
    // batch (never acknowledged), and only that batch.
    for cut in [1usize, 5, 9, 20, 300] {
        fs::write(&path, &full[..full.len() - cut]).unwrap();
        let (records, torn) = read_all(&dir).unwrap();
        assert_eq!(records.len(), 40, "cut {cut}");
        assert!(torn > 0);
    }
    let mut garbled = full.clone();
    let n = garbled.len();
    garbled[n - 3] ^= 0xff;
    fs::write(&path, &garbled).unwrap();
    assert_eq!(read_all(&dir).unwrap().0.len(), 40);
    // A power loss that kept the end of the last batch but not its middle.
    let mut holed = full.clone();
    let n = holed.len();
    holed[n - 250..n - 100].fill(0);
    fs::write(&path, &holed).unwrap();
    assert_eq!(read_all(&dir).unwrap().0.len(), 40);
    // Zeros after the last batch: the space the writer zeroes ahead, not damage.
    let mut zeros = full.clone();
    zeros.extend_from_slice(&[0; 40]);
    fs::write(&path, &zeros).unwrap();
    let (records, torn) = read_all(&dir).unwrap();
    assert_eq!((records.len(), torn), (50, 0));
    // The last batch torn inside the zeroed space: lost, and only it.
    let mut torn_in_zeros = full[..full.len() - 200].to_vec();
    torn_in_zeros.extend_from_slice(&[0; 4096]);
    fs::write(&path, &torn_in_zeros).unwrap();
    let (records, torn) = read_all(&dir).unwrap();
    assert_eq!(records.len(), 40);
    assert!(torn > 0);
    // Something other than zeros after the end: damage, even past a run of zeros.
    let mut stray = full.clone();
    stray.extend_from_slice(&[0; 100]);
    stray.push(1);
    fs::write(&path, &stray).unwrap();
    let (records, torn) = read_all(&dir).unwrap();
    assert_eq!((records.len(), torn), (50, 101));
    // Damage in the batch before the last, with the last batch intact: corruption.
    let mut earlier = full.clone();
    let n = earlier.len();
    earlier[n - 700] ^= 0x01;
    fs::write(&path, &earlier).unwrap();
    let err = read_all(&dir).unwrap_err().to_string();
    assert!(err.contains("checksum") || err.contains("length"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corruption_in_the_middle_names_file_and_offset() {
    let dir = temp_dir("corrupt");
    write(&dir, 50, 1 << 20);
    let (_, path) = list_segments(&dir).unwrap().pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let offset = SEGMENT_HEADER_BYTES + 10 * 51 + 20;
    bytes[offset] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let err = read_all(&dir).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(path.to_str().unwrap()), "{text}");
    assert!(matches!(err, JournalError::Corrupt { offset: o, .. } if o as usize <= offset));
    assert!(text.contains("checksum") || text.contains("length"), "{text}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gap_between_segments_and_unknown_version_are_refused() {
    let dir = temp_dir("gap");
    write(&dir, 1000, 8192);
    let segments = list_segments(&dir).unwrap();
    fs::remove_file(&segments[1].1).unwrap();
    let err = read_all(&dir).unwrap_err().to_string();
    assert!(err.contains("gap"), "{err}");
    assert!(err.contains(&segment_name(segments[2].0)), "{err}");

    let dir2 = temp_dir("version");
    write(&dir2, 5, 1 << 20);
    let (_, path) = list_segments(&dir2).unwrap().pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[8] = 9;
    fs::write(&path, &bytes).unwrap();
    let err = read_all(&dir2).unwrap_err().to_string();
    assert!(err.contains("unknown segment version 9"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&dir2).unwrap();
}
