//! Fuzzed decoders of the gateway (property-based, stable toolchain): WebSocket control
//! messages, REST bodies and query strings, the binary market-data decoder clients use,
//! and the order-history file. Arbitrary bytes and mutations of valid inputs decode or are
//! refused with a clear error: no panic, no hang, no allocation sized by a damaged field.
//!
//! CI runs the default case count. A longer run:
//! `PROPTEST_CASES=200000 cargo test --release -p tickgate-gateway --test fuzz`.

use proptest::prelude::*;
use tickgate_engine::*;
use tickgate_gateway::history::{self, Entry, HistoryWriter};
use tickgate_gateway::protocol;
use tickgate_gateway::trading::NewOrderRequest;
use tickgate_gateway::ws::control::{self, RequestId};

const VALID_REQUESTS: &[&str] = &[
    r#"{"op":"subscribe","id":1,"channels":["book.BTC-USD","trades.ETH-USD"],"depth":20}"#,
    r#"{"op":"unsubscribe","id":"u","channels":["book.BTC-USD"]}"#,
    r#"{"op":"ping","id":3}"#,
    r#"{"op":"auth","id":4,"token":"a.b.c"}"#,
    r#"{"op":"order.new","id":5,"symbol":"BTC-USD","side":"buy","type":"limit","price":"65000.00","qty":"0.1000","client_order_id":7,"stp":"none","idempotency_key":"k"}"#,
    r#"{"op":"order.replace","id":6,"order_id":42,"price":"64990.00"}"#,
    r#"{"op":"order.cancel","id":7,"order_id":42}"#,
    r#"{"op":"order.cancel_all","id":8,"symbol":"BTC-USD"}"#,
    r#"{"op":"cancel_on_disconnect","id":9,"enabled":true}"#,
];

fn mutate(text: &str, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for (at, byte) in edits {
        let at = at % bytes.len();
        bytes[at] = *byte;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

fn report(seq: u64) -> ExecReport {
    ExecReport {
        account: AccountId(1),
        seq: Seq(seq),
        ts: UnixNanos(seq),
        kind: ExecKind::PartiallyFilled,
        reason: None,
        instrument: InstrumentId(0),
        order_id: OrderId(seq),
        client_order_id: 0,
        side: Side::Buy,
        order_type: OrderType::Limit,
        price: Price(10),
        last_price: Price(10),
        last_qty: Qty(1),
        leaves_qty: Qty(1),
        cum_qty: Qty(1),
    }
}

/// `PROPTEST_CASES` when set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn control_messages_parse_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut scratch = Vec::new();
        let _ = control::parse(&bytes, &mut scratch);
    }

    /// A mutated request either parses or is refused; when the frame is still a JSON
    /// object with a numeric or string `id`, the refusal echoes it.
    #[test]
    fn mutated_requests_echo_their_id(
        n in 0..VALID_REQUESTS.len(),
        edits in prop::collection::vec((any::<usize>(), prop::sample::select(b"{}[]\":,0123456789-.e ax\\".to_vec())), 0..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        let bytes = mutate(VALID_REQUESTS[n], &edits, cut);
        let mut scratch = Vec::new();
        if let Err(e) = control::parse(&bytes, &mut scratch) {
            prop_assert!(!e.message.is_empty());
            prop_assert!(!e.message.contains("TapeError") && !e.message.contains("character"), "{}", e.message);
            if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                let expected = match o.get("id") {
                    Some(serde_json::Value::Number(n)) => Some(RequestId::Num(n.clone())),
                    Some(serde_json::Value::String(s)) => Some(RequestId::Str(s.clone())),
                    _ => None,
                };
                if expected.is_some() {
                    prop_assert_eq!(e.id, expected, "{}", String::from_utf8_lossy(&bytes));
                }
            }
        }
    }

    #[test]
    fn rest_bodies_parse_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = tickgate_gateway::rest::parse_json::<NewOrderRequest>(bytes);
    }

    #[test]
    fn query_strings_never_panic(query in ".{0,64}", name in "[a-z_]{0,8}") {
        let _ = tickgate_gateway::request::query_param(Some(&query), &name);
        let uri = format!("/api/v1/fills?{}", query.replace(['#', ' '], ""));
        if let Ok(req) = hyper::Request::builder().uri(uri).body(()) {
            let _ = tickgate_gateway::rest::number_param(&req, "limit", 100, 1..=1000);
        }
    }

    #[test]
    fn binary_frames_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for message in protocol::decode(&bytes).flatten() {
            let _ = protocol::decode_book_delta(&message);
            let _ = protocol::decode_book_snapshot(message.body);
        }
        let _ = protocol::decode_book_snapshot(&bytes);
    }

    #[test]
    fn mutated_history_files_load_or_refuse(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        let dir = std::env::temp_dir().join(format!("tickgate-fuzz-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let entries: Vec<Entry> = (1..8).map(|s| Entry::Report(report(s))).collect();
        drop(HistoryWriter::create(&dir, entries).expect("history"));
        let path = dir.join("orders.tgh");
        let mut bytes = std::fs::read(&path).expect("read");
        for (at, byte) in &edits {
            let at = at % bytes.len();
            bytes[at] ^= byte | 1;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        std::fs::write(&path, &bytes).expect("write");
        if let Ok(loaded) = history::load(&dir) {
            prop_assert!(loaded.entries.len() <= 7);
        }
    }
}
