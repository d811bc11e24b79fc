//! Unit tests of [`super::Outbox`]: frame coalescing and read receipts.

use super::*;
use tickgate_engine::clock::WallClock;

fn outbox(format: Format) -> Outbox {
    Outbox::new(format, 1024 * 1024, None)
}

/// What is queued, as one byte string, and the frames it holds (opcode, payload).
fn queued(o: &Outbox) -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
    let bytes: Vec<u8> = o.out.iter().flat_map(|b| b.iter().copied()).collect();
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = protocol::frame_header_len(&bytes[at..]);
        let len = match header {
            2 => usize::from(bytes[at + 1] & 0x7f),
            4 => usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
            _ => u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
        };
        frames.push((bytes[at] & 0x0f, bytes[at + header..at + header + len].to_vec()));
        at += header + len;
    }
    (bytes, frames)
}

#[test]
fn a_drain_of_several_binary_frames_leaves_as_one_frame_of_their_messages() {
    let mut o = outbox(Format::Binary);
    let big = vec![7u8; 300];
    o.stage(protocol::frame(Opcode::Binary, b"first").into(), 1);
    o.stage(protocol::frame(Opcode::Binary, &big).into(), 2);
    o.stage(protocol::frame(Opcode::Binary, b"third").into(), 1);
    assert_eq!(o.out_bytes, 7 + 304 + 7);
    o.seal();
    let (bytes, frames) = queued(&o);
    assert_eq!(o.out_bytes, bytes.len(), "queued bytes counted exactly");
    assert_eq!((o.out_frames, o.out_messages), (1, 4));
    let mut payload = b"first".to_vec();
    payload.extend_from_slice(&big);
    payload.extend_from_slice(b"third");
    assert_eq!(frames, vec![(Opcode::Binary as u8, payload)]);
    assert_eq!(bytes.len(), 4 + 310, "one header (16-bit length) for all");
}

#[test]
fn a_single_frame_is_queued_as_it_was() {
    let mut o = outbox(Format::Binary);
    let frame: Bytes = protocol::frame(Opcode::Binary, b"only").into();
    o.stage(frame.clone(), 1);
    o.seal();
    assert_eq!(o.out.iter().collect::<Vec<_>>(), vec![&frame]);
    assert_eq!((o.out_frames, o.out_bytes), (1, frame.len()));
    o.seal();
    assert_eq!(o.out.len(), 1, "nothing staged: nothing queued");
}

#[test]
fn json_frames_merge_into_one_valid_array() {
    let mut o = outbox(Format::Json);
    o.stage(json_array_frame(r#"{"a":1},{"b":2}"#), 2);
    o.stage(protocol::frame(Opcode::Text, b"[]").into(), 0);
    o.stage(json_array_frame(r#"{"c":[3]}"#), 1);
    o.seal();
    let (_, frames) = queued(&o);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, Opcode::Text as u8);
    let v: serde_json::Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(v, serde_json::json!([{"a":1},{"b":2},{"c":[3]}]));
    assert_eq!(o.out_messages, 3);
}

/// The payload of the newest receipt ping queued.
fn newest_receipt(o: &Outbox) -> Vec<u8> {
    let ping = o.out.iter().rev().find(|f| f[0] == 0x80 | Opcode::Ping as u8).expect("a ping");
    ping[protocol::frame_header_len(ping)..].to_vec()
}

#[test]
fn read_receipts_hold_market_data_until_the_client_confirms_reading() {
    let mut o = outbox(Format::Binary);
    o.unread_max = 3 * RECEIPT_EVERY;
    let metrics = Metrics::default();
    // Queued and written past a receipt's worth: a receipt ping goes in the queue.
    o.queue(Bytes::from(vec![0u8; RECEIPT_EVERY as usize]), 1);
    assert!(!o.drain(&metrics, usize::MAX, &WallClock));
    let position = o.last_receipt;
    assert_eq!(position, RECEIPT_EVERY);
    let ping = o.out.back().expect("queued").clone();
    assert_eq!(ping[0], 0x80 | Opcode::Ping as u8);
    let payload = &ping[protocol::frame_header_len(&ping)..];
    assert_eq!(payload, [RECEIPT_TAG, &position.to_be_bytes()[..]].concat());
    // Another pong, a stale one, one of another length: nothing confirmed.
    assert!(!o.pong(b"tickgate"));
    let beyond = o.queued_total + 1;
    assert!(!o.pong(&[RECEIPT_TAG, &beyond.to_be_bytes()[..]].concat()), "never queued");
    assert!(!o.pong(&[RECEIPT_TAG, &[1, 2, 3][..]].concat()));
    assert_eq!(o.read_total, 0);
    // Far past the allowance: drain collects nothing more (a stalled client), but the
    // end of what is queued has its receipt ping.
    o.queue(Bytes::from(vec![0u8; 3 * RECEIPT_EVERY as usize]), 1);
    assert!(!o.drain(&metrics, usize::MAX, &WallClock));
    let end = o.last_receipt;
    assert_eq!(end, 4 * RECEIPT_EVERY + ping.len() as u64, "a ping for the newest data");
    let before = o.out.len();
    assert!(!o.drain(&metrics, usize::MAX, &WallClock));
    assert_eq!(o.out.len(), before, "held, and no second ping for the same data");
    let holds = || metrics.ws_receipt_holds_total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(holds(), 1, "one pause, counted once");
    // The first receipt's pong: read up to its position, and it says data was held; still
    // held (more than the allowance unconfirmed after it), and the newer ping is queued.
    assert!(o.pong(payload));
    assert_eq!(o.read_total, position);
    assert!(!o.pong(payload), "an old position again: nothing new");
    // The newest ping's pong frees the connection.
    assert!(o.pong(&newest_receipt(&o)));
    assert_eq!(o.read_total, end);
    assert!(!o.drain(&metrics, usize::MAX, &WallClock));
    assert_eq!(holds(), 1, "not held any more");
    // A heartbeat ping asks for everything so far; a client that answers only the
    // newest ping confirms the older receipts with it.
    let older = o.receipt_ping();
    o.queue(Bytes::from(vec![0u8; 10]), 1);
    let newer = o.receipt_ping();
    let answer = &newer[protocol::frame_header_len(&newer)..];
    assert!(!older.is_empty());
    o.pong(answer);
    assert_eq!(o.read_total, o.queued_total);
}

/// A client that answers the receipt pings it reads is never left without one to answer.
/// With one receipt in flight at a time, a pong that left the connection over its
/// allowance (a ping early in a busy stretch, then drains of a whole write batch each)
/// froze the connection until the next heartbeat ping, 20 s later: measured as healthy
/// connections that got nothing for seconds.
#[test]
fn a_client_that_answers_its_pings_is_never_left_without_one_to_answer() {
    let mut o = outbox(Format::Binary);
    o.unread_max = 8 * RECEIPT_EVERY;
    let metrics = Metrics::default();
    let half = Bytes::from(vec![0u8; RECEIPT_EVERY as usize / 2]);
    let ping_opcode = 0x80 | Opcode::Ping as u8;
    // A quiet start: one receipt's worth, and its ping.
    o.queue(half.clone(), 1);
    o.queue(half.clone(), 1);
    o.drain(&metrics, usize::MAX, &WallClock);
    for round in 0..50 {
        // The server: drains of a write batch's worth (two receipts), as `collect` adds
        // them, until the allowance holds the connection.
        let before = o.queued_total;
        for _ in 0..20 {
            if o.queued_total - o.read_total > o.unread_max {
                break;
            }
            for _ in 0..4 {
                o.queue(half.clone(), 1);
            }
            o.drain(&metrics, usize::MAX, &WallClock);
        }
        assert!(o.queued_total > before, "round {round}: nothing could be sent");
        // The client reads everything written and answers the newest ping it read.
        let pings: Vec<Bytes> = o.out.drain(..).filter(|f| f[0] == ping_opcode).collect();
        o.out_bytes = 0;
        let newest = pings.last().expect("a ping to answer");
        o.pong(&newest[protocol::frame_header_len(newest)..]);
    }
}

#[test]
fn json_frames_that_are_all_empty_make_an_empty_array() {
    let mut o = outbox(Format::Json);
    o.stage(protocol::frame(Opcode::Text, b"[]").into(), 0);
    o.stage(protocol::frame(Opcode::Text, b"[]").into(), 0);
    o.seal();
    let (_, frames) = queued(&o);
    assert_eq!(frames, vec![(Opcode::Text as u8, b"[]".to_vec())]);
}
