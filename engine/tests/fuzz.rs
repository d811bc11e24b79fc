//! Fuzzed decoders (property-based, stable toolchain): every decoder of bytes from disk
//! (journal records and segments, snapshot state) takes arbitrary bytes and
//! structure-aware mutations of valid inputs (flipped bytes, truncation, inserted bytes,
//! and records re-framed with a valid checksum so the decoder beneath the CRC is reached)
//! without a panic, a hang or a huge allocation: it decodes or refuses.
//!
//! CI runs the default case count. A longer run:
//! `PROPTEST_CASES=200000 cargo test --release -p tickgate-engine --test fuzz`.

mod common;

use proptest::prelude::*;
use tickgate_engine::journal::{decode_payload, encode_record, read_segment, JournalWriter};
use tickgate_engine::*;

/// A mutation of a valid input.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Overwrite { at: usize, value: u64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        // Length and count fields are where a decoder over-allocates: big values there.
        (any::<usize>(), prop_oneof![Just(u64::MAX), Just(u64::from(u32::MAX)), any::<u64>()])
            .prop_map(|(at, value)| Mutation::Overwrite { at, value }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        match m {
            Mutation::Flip { at, mask } => bytes[at % len] ^= mask,
            Mutation::Truncate { at } => bytes.truncate(at % len),
            Mutation::Insert { at, bytes: b } => {
                let at = at % len;
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Overwrite { at, value } => {
                let at = at % len;
                let end = (at + 8).min(len);
                bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            }
        }
    }
}

fn command(i: u64) -> Command {
    let kind = match i % 4 {
        0 => CommandKind::New(NewOrder {
            order_id: OrderId(i),
            client_order_id: i,
            account: AccountId(1),
            instrument: InstrumentId(0),
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Price(100),
            qty: Qty(1),
            stp: StpMode::None,
            key: i.is_multiple_of(8).then_some(IdempotencyKey(u128::from(i))),
        }),
        1 => CommandKind::Cancel(CancelOrder {
            order_id: OrderId(i),
            account: AccountId(1),
            instrument: InstrumentId(0),
        }),
        2 => CommandKind::Replace(ReplaceOrder {
            order_id: OrderId(i),
            account: AccountId(1),
            instrument: InstrumentId(0),
            price: Price(99),
            qty: if i.is_multiple_of(2) {
                ReplaceQty::Open(Qty(2))
            } else {
                ReplaceQty::Total(Qty(2))
            },
        }),
        _ => CommandKind::Transfer(Transfer {
            account: AccountId(2),
            asset: AssetId(0),
            amount: Amount(5),
            request_id: i,
        }),
    };
    Command { ts: UnixNanos(i), kind }
}

/// A valid journal segment of `n` commands, as bytes.
fn segment(n: u64) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("tickgate-fuzz-seg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut w = JournalWriter::open(&dir, 0, 1, 1 << 20).expect("writer");
    for i in 0..n {
        w.append(&command(i + 1));
        if i % 3 == 2 {
            w.commit(false).expect("commit");
        }
    }
    w.commit(false).expect("commit");
    let bytes = std::fs::read(w.path()).expect("segment");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// A busy engine's state bytes (resting orders, balances, keys).
fn state() -> (EngineSpec, Vec<u8>) {
    let mut h = common::Harness::new();
    h.fund(1, 1_000_000, 100);
    h.fund(2, 1_000_000, 100);
    for i in 0..20 {
        h.order(
            1 + i % 2,
            if i % 2 == 0 { Side::Buy } else { Side::Sell },
            OrderType::Limit,
            100 + (i as i64 % 7) - 3,
            1 + i as i64 % 3,
        );
    }
    let mut bytes = Vec::new();
    h.engine.encode_state(&mut bytes);
    (common::spec(), bytes)
}

/// `PROPTEST_CASES` when set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn journal_payloads_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode_payload(&bytes);
    }

    #[test]
    fn mutated_records_decode_or_refuse(i in 0u64..64, mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut framed = Vec::new();
        encode_record(i, &command(i), &mut framed);
        let mut payload = framed[8..].to_vec();
        mutate(&mut payload, &mutations);
        // Whatever decodes encodes back to the same bytes: no field is half-read.
        if let Some(record) = decode_payload(&payload) {
            let mut again = Vec::new();
            encode_record(record.seq, &record.command, &mut again);
            prop_assert_eq!(&again[8..], &payload[..]);
        }
    }

    #[test]
    fn mutated_segments_read_or_refuse(mutations in prop::collection::vec(mutation(), 1..4), last in any::<bool>()) {
        let mut bytes = segment(12);
        mutate(&mut bytes, &mutations);
        let dir = std::env::temp_dir().join(format!("tickgate-fuzz-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("journal-00000000000000000001.tgj");
        std::fs::write(&path, &bytes).expect("write");
        let mut seen = 0u64;
        let _ = read_segment(&path, 0, None, last, |_| seen += 1);
        prop_assert!(seen <= 12 + 8, "records out of thin air: {}", seen);
    }

    #[test]
    fn mutated_snapshot_state_restores_or_refuses(mutations in prop::collection::vec(mutation(), 1..4)) {
        let (spec, mut bytes) = state();
        mutate(&mut bytes, &mutations);
        // Damage the snapshot's CRC did not catch (it always does on disk) is decoded or
        // refused; never a panic or an allocation sized by a damaged count.
        let _ = Engine::restore_state(&spec, |_| true, &bytes, true);
    }

    #[test]
    fn arbitrary_snapshot_state_is_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Engine::restore_state(&common::spec(), |_| true, &bytes, true);
    }
}
