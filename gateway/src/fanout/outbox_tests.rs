//! Unit tests of [`super::Outbox`]: frame coalescing and read receipts.

use super::*;
use tickgate_engine::clock::{ManualClock, WallClock};
use tickgate_engine::UnixNanos;

/// Growth for every test connection (the shared pool has its own test).
static POOL: std::sync::LazyLock<AllowancePool> =
    std::sync::LazyLock::new(|| AllowancePool::new(u64::MAX));

fn outbox(format: Format) -> Outbox {
    Outbox::new(format, (ALLOWANCE_START, 1024 * 1024), None)
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
    o.stage(&protocol::frame(Opcode::Binary, b"first").into(), 1);
    o.stage(&protocol::frame(Opcode::Binary, &big).into(), 2);
    o.stage(&protocol::frame(Opcode::Binary, b"third").into(), 1);
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
    o.stage(&frame, 1);
    o.seal();
    assert_eq!(o.out.iter().collect::<Vec<_>>(), vec![&frame]);
    assert_eq!((o.out_frames, o.out_bytes), (1, frame.len()));
    o.seal();
    assert_eq!(o.out.len(), 1, "nothing staged: nothing queued");
}

#[test]
fn json_frames_merge_into_one_valid_array() {
    let mut o = outbox(Format::Json);
    o.stage(&json_array_frame(r#"{"a":1},{"b":2}"#), 2);
    o.stage(&protocol::frame(Opcode::Text, b"[]").into(), 0);
    o.stage(&json_array_frame(r#"{"c":[3]}"#), 1);
    o.seal();
    let (_, frames) = queued(&o);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, Opcode::Text as u8);
    let v: serde_json::Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(v, serde_json::json!([{"a":1},{"b":2},{"c":[3]}]));
    assert_eq!(o.out_messages, 3);
}

/// Small payloads are copied into the connection's frame; a large one is shared with the
/// channel's frame (no copy of its bytes), and the frame holds every payload in order.
#[test]
fn small_payloads_are_copied_and_large_ones_shared_in_order() {
    for format in [Format::Binary, Format::Json] {
        let (opcode, json) = match format {
            Format::Binary => (Opcode::Binary, false),
            Format::Json => (Opcode::Text, true),
        };
        let element = |tag: u8, n: usize| {
            let body = if json { format!(r#""{}""#, "x".repeat(n)) } else { "x".repeat(n) };
            let mut b = body.into_bytes();
            b[usize::from(json)] = tag;
            b
        };
        let frame_of = |e: &[u8]| -> Bytes {
            let payload = if json { [b"[", e, b"]"].concat() } else { e.to_vec() };
            protocol::frame(opcode, &payload).into()
        };
        let (a, big, c, big2) = (
            element(b'a', 10),
            element(b'b', COPY_MAX + 1),
            element(b'c', 20),
            element(b'd', 5000),
        );
        let big_frame = frame_of(&big);
        let mut o = outbox(format);
        o.stage(&frame_of(&a), 1);
        o.stage(&big_frame, 1);
        o.stage(&frame_of(&c), 1);
        o.stage(&frame_of(&big2), 1);
        o.seal();
        let (bytes, frames) = queued(&o);
        assert_eq!(o.out_bytes, bytes.len(), "queued bytes counted exactly");
        assert_eq!((o.out_frames, o.out_messages), (1, 4));
        let payload = if json {
            [b"[", &a[..], b",", &big, b",", &c, b",", &big2, b"]"].concat()
        } else {
            [&a[..], &big, &c, &big2].concat()
        };
        assert_eq!(frames, vec![(opcode as u8, payload)]);
        // Header and `a` copied; `big` shared; `c` copied; `big2` shared; JSON's `]`.
        assert_eq!(o.out.len(), 4 + usize::from(json));
        let shared = &o.out[1];
        let at = protocol::frame_header_len(&big_frame) + usize::from(json);
        assert_eq!(shared.as_ptr(), big_frame[at..].as_ptr(), "shared, not copied");
        assert_eq!(shared.len(), big.len());
        // A large payload first: the header still leads.
        let mut o = outbox(format);
        o.stage(&big_frame, 1);
        o.stage(&frame_of(&a), 1);
        o.seal();
        let (bytes, frames) = queued(&o);
        assert_eq!(o.out_bytes, bytes.len());
        let payload =
            if json { [b"[", &big[..], b",", &a, b"]"].concat() } else { [&big[..], &a].concat() };
        assert_eq!(frames, vec![(opcode as u8, payload)]);
        // Two large payloads: the header, then both shared, nothing empty between them.
        let mut o = outbox(format);
        o.stage(&big_frame, 1);
        o.stage(&frame_of(&big2), 1);
        o.seal();
        let (_, frames) = queued(&o);
        let payload = if json {
            [b"[", &big[..], b",", &big2, b"]"].concat()
        } else {
            [&big[..], &big2].concat()
        };
        assert_eq!(frames, vec![(opcode as u8, payload)]);
        assert!(o.out.iter().all(|part| !part.is_empty()), "no empty part to write");
        assert_eq!(o.out.len(), 3 + 2 * usize::from(json), "header, big, (`,`), big2, (`]`)");
    }
}

/// A writer's cache of the rings gives a connection exactly what the rings give, and still
/// has a chunk the ring has since overwritten (chunks never change once published).
#[test]
fn the_writers_cache_serves_what_the_ring_serves() {
    let (mut publisher, mut direct, channel) = following(1024 * 1024);
    let mut cached = follower(&channel, 1024 * 1024);
    let first = cached.subs[0].cursor;
    let (metrics, mut cache, mut seq) = (Metrics::default(), ChunkCache::default(), 0);
    for trades in [1, 5, 0, 40, 3] {
        pass(&mut publisher, &mut seq, trades);
        direct.drain(&metrics, usize::MAX, &WallClock, None);
        cached.drain(&metrics, usize::MAX, &WallClock, Some(&mut cache));
        assert_eq!(queued(&cached), queued(&direct));
        assert_eq!(cached.subs[0].cursor, direct.subs[0].cursor);
    }
    let kept = cache.get(&channel, first).map(|c| (c.index, c.last_seq));
    assert_eq!(kept, channel.chunk(first).map(|c| (c.index, c.last_seq)));
    // A lap of the ring later, the ring's slot holds a newer chunk; the cache's does not.
    for _ in 0..channel.capacity() {
        pass(&mut publisher, &mut seq, 1);
    }
    assert!(channel.chunk(first).is_none(), "overwritten in the ring");
    assert_eq!(cache.get(&channel, first).map(|c| (c.index, c.last_seq)), kept);
    assert!(cache.get(&channel, channel.head()).is_none(), "not published yet");
}

/// The payload of the newest receipt ping queued.
fn newest_receipt(o: &Outbox) -> Vec<u8> {
    let ping = o.out.iter().rev().find(|f| f[0] == 0x80 | Opcode::Ping as u8).expect("a ping");
    ping[protocol::frame_header_len(ping)..].to_vec()
}

#[test]
fn read_receipts_hold_market_data_until_the_client_confirms_reading() {
    let mut o = outbox(Format::Binary);
    // A receipt ping per half allowance.
    const EVERY: u64 = ALLOWANCE_START / 2;
    assert_eq!(o.allowance(), ALLOWANCE_START);
    let metrics = Metrics::default();
    // Queued and written past a receipt's worth: a receipt ping goes in the queue.
    o.queue(Bytes::from(vec![0u8; EVERY as usize]), 1);
    assert!(!o.drain(&metrics, usize::MAX, &WallClock, None));
    let position = o.last_receipt;
    assert_eq!(position, EVERY);
    let ping = o.out.back().expect("queued").clone();
    assert_eq!(ping[0], 0x80 | Opcode::Ping as u8);
    let payload = &ping[protocol::frame_header_len(&ping)..];
    assert_eq!(payload, [RECEIPT_TAG, &position.to_be_bytes()[..]].concat());
    // Another pong, a stale one, one of another length: nothing confirmed.
    assert!(!o.pong(b"tickgate", 0, &POOL));
    let beyond = o.queued_total + 1;
    assert!(!o.pong(&[RECEIPT_TAG, &beyond.to_be_bytes()[..]].concat(), 0, &POOL), "never queued");
    assert!(!o.pong(&[RECEIPT_TAG, &[1, 2, 3][..]].concat(), 0, &POOL));
    assert_eq!(o.read_total, 0);
    // At the allowance: drain collects nothing more (a stalled client), but the end of
    // what is queued has its receipt ping.
    o.queue(Bytes::from(vec![0u8; 3 * EVERY as usize]), 1);
    assert!(!o.drain(&metrics, usize::MAX, &WallClock, None));
    let end = o.last_receipt;
    assert_eq!(end, 4 * EVERY + ping.len() as u64, "a ping for the newest data");
    let before = o.out.len();
    assert!(!o.drain(&metrics, usize::MAX, &WallClock, None));
    assert_eq!(o.out.len(), before, "held, and no second ping for the same data");
    let holds = || metrics.ws_receipt_holds_total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(holds(), 1, "one pause, counted once");
    // The first receipt's pong releases the connection: read up to its position, and it
    // says data was held.
    assert!(o.pong(payload, 0, &POOL));
    assert_eq!(o.read_total, position);
    assert!(!o.pong(payload, 0, &POOL), "an old position again: nothing new");
    assert!(!o.pong(&newest_receipt(&o), 0, &POOL), "confirms more, but nothing was held");
    assert_eq!(o.read_total, end);
    assert!(!o.drain(&metrics, usize::MAX, &WallClock, None));
    assert_eq!(holds(), 1, "not held any more");
    // A heartbeat ping asks for everything so far; a client that answers only the
    // newest ping confirms the older receipts with it.
    let older = o.receipt_ping();
    o.queue(Bytes::from(vec![0u8; 10]), 1);
    let newer = o.receipt_ping();
    let answer = &newer[protocol::frame_header_len(&newer)..];
    assert!(!older.is_empty());
    o.pong(answer, 0, &POOL);
    assert_eq!(o.read_total, o.queued_total);
}

/// A new connection may have only its trial allowance unconfirmed until a receipt comes
/// back: a client that connects and never reads costs that, not a reader's start. The
/// first receipt gives it the start, which is no growth (an empty pool is no matter).
#[test]
fn a_new_connection_is_on_trial_until_its_first_read_receipt() {
    let metrics = Metrics::default();
    let empty = AllowancePool::new(0);
    let mut o = outbox(Format::Binary).on_trial();
    assert_eq!(o.allowance(), ALLOWANCE_TRIAL);
    // A snapshot of half the trial: a receipt ping after it, the connection not held yet.
    let piece = Bytes::from(vec![0u8; ALLOWANCE_TRIAL as usize / 2]);
    o.queue(piece.clone(), 1);
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert!(!o.held);
    let first = newest_receipt(&o);
    // The client never reads: held at the trial allowance (plus its pings), not the start.
    o.queue(piece.clone(), 1);
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert!(o.held, "held at the trial allowance");
    assert!(
        o.queued_total < ALLOWANCE_TRIAL + 64,
        "{} bytes for a client on trial",
        o.queued_total
    );
    // It reads: the pong of the first receipt ends the trial and releases it.
    assert!(o.pong(&first, 0, &empty), "held until then: released");
    assert_eq!((o.allowance(), empty.used()), (ALLOWANCE_START, 0));
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert!(!o.held);
    // Receipts come per half the start from now on.
    let before = o.last_receipt;
    o.queue(Bytes::from(vec![0u8; (ALLOWANCE_START / 2) as usize - 64]), 1);
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert_eq!(o.last_receipt, before, "no receipt before half the start");
    // A quarter of the start, within the least allowance and the start.
    let trial = |start: u64| Outbox::new(Format::Binary, (start, 1 << 30), None).on_trial();
    assert_eq!(trial(64 << 20).allowance(), 16 << 20, "a huge start: a huge trial");
    assert_eq!(trial(2 * ALLOWANCE_MIN).allowance(), ALLOWANCE_MIN);
    assert_eq!(trial(ALLOWANCE_MIN).allowance(), ALLOWANCE_MIN, "never above the start");
    // The start is clamped to the most first: a quarter of that.
    let o = Outbox::new(Format::Binary, (1 << 30, 1 << 20), None).on_trial();
    assert_eq!(o.allowance(), 256 << 10);
}

/// A client that answers the receipt pings it reads is never left without one to answer.
/// With one receipt in flight at a time, a pong that left the connection over its
/// allowance (a ping early in a busy stretch, then drains of a whole write batch each)
/// froze the connection until the next heartbeat ping, 20 s later: measured as healthy
/// connections that got nothing for seconds.
#[test]
fn a_client_that_answers_its_pings_is_never_left_without_one_to_answer() {
    let mut o = outbox(Format::Binary);
    let metrics = Metrics::default();
    let piece = Bytes::from(vec![0u8; ALLOWANCE_START as usize / 8]);
    let ping_opcode = 0x80 | Opcode::Ping as u8;
    // A quiet start: a receipt's worth, and its ping.
    o.queue(piece.clone(), 1);
    o.queue(piece.clone(), 1);
    o.drain(&metrics, usize::MAX, &WallClock, None);
    for round in 0..50 {
        // The server: drains of several receipts' worth, as `collect` adds them, until the
        // allowance holds the connection.
        let before = o.queued_total;
        for _ in 0..200 {
            if o.queued_total - o.read_total >= o.allowance {
                break;
            }
            for _ in 0..4 {
                o.queue(piece.clone(), 1);
            }
            o.drain(&metrics, usize::MAX, &WallClock, None);
        }
        assert!(o.queued_total > before, "round {round}: nothing could be sent");
        // The client reads everything written and answers the newest ping it read.
        let pings: Vec<Bytes> = o.out.drain(..).filter(|f| f[0] == ping_opcode).collect();
        o.out_bytes = 0;
        let newest = pings.last().expect("a ping to answer");
        o.pong(&newest[protocol::frame_header_len(newest)..], 0, &POOL);
    }
}

/// A channel with a publisher, and an outbox following it from its start.
fn following(unread_max: u64) -> (crate::fanout::Publisher, Outbox, Arc<super::Channel>) {
    let engine = tickgate_engine::Engine::new(&tickgate_engine::EngineSpec::default(), |_| true)
        .expect("default markets");
    let n = engine.instruments().len();
    let candles = Arc::new(crate::candles::Candles::new(n, None).expect("no file"));
    let directory = Arc::new(super::super::Directory::new(engine.instruments(), 1024, &candles));
    let channel = Arc::clone(directory.get("trades.BTC-USD").expect("trades"));
    let publisher = crate::fanout::Publisher::new(
        directory,
        Arc::default(),
        tickgate_engine::WallClock::shared(),
    );
    let o = follower(&channel, unread_max);
    (publisher, o, channel)
}

/// An outbox following `channel` from now on.
fn follower(channel: &Arc<super::Channel>, unread_max: u64) -> Outbox {
    let start = channel.subscribe(false, 10);
    let mut o = Outbox::new(Format::Binary, (ALLOWANCE_START, unread_max), None);
    o.subs.push(Sub {
        channel: Arc::clone(channel),
        cursor: start.cursor,
        depth: 10,
        last_seq: start.seq,
        last_sent: Instant::now(),
    });
    o
}

/// One hub pass of `trades` trades.
fn pass(p: &mut crate::fanout::Publisher, seq: &mut u64, trades: u64) {
    use tickgate_engine::{Event, InstrumentId, OrderId, Price, Qty, Seq, Side, Trade, UnixNanos};
    for _ in 0..trades {
        *seq += 1;
        p.ingest(&Event::Trade(Trade {
            instrument: InstrumentId(0),
            seq: Seq(*seq),
            ts: UnixNanos(*seq),
            price: Price(100),
            qty: Qty(1),
            taker_side: Side::Sell,
            maker_order: OrderId(1),
            taker_order: OrderId(2),
        }));
    }
    p.publish();
}

/// What a client that stops reading costs is its allowance. One that read a little
/// promptly kept the small starting one; one that read a lot, as much as keeps its
/// receipts to [`RECEIPTS_PER_SEC`] a second, no more (measured: 1,000 clients freezing at
/// once with 1 MiB each stopped every healthy connection for a second). Either way the
/// writer copies at most that (and one pass) into its kernel once it stops.
#[test]
fn a_prompt_reader_that_stalls_costs_only_the_allowance_its_rate_needs() {
    // Trades a millisecond (64 bytes each): about 130 KB a second (2 receipts a second
    // through the start), then about 960 KB a second (15 through the start, 7.5 through
    // twice it).
    for (trades, grown) in [(2, ALLOWANCE_START), (15, 2 * ALLOWANCE_START)] {
        let (mut publisher, mut o, _channel) = following(1024 * 1024);
        let metrics = Metrics::default();
        let clock = ManualClock::new(UnixNanos(1_000_000_000));
        let (mut seq, mut largest, mut receipts) = (0, 0, 0);
        // A pass every millisecond; the client reads what was written and answers the
        // newest ping it saw within the millisecond.
        for ms in 0..3_000 {
            pass(&mut publisher, &mut seq, trades);
            let queued = o.queued_total;
            o.drain(&metrics, 256 * 1024, clock.as_ref(), None);
            largest = largest.max(o.queued_total - queued);
            clock.advance(Duration::from_nanos(500_000));
            let confirmed = o.read_total;
            client_reads(&mut o, clock.now().0);
            receipts += u64::from(ms >= 2_000 && o.read_total != confirmed);
            clock.advance(Duration::from_nanos(500_000));
        }
        let allowance = o.allowance();
        assert_eq!(allowance, grown, "{trades} trades a millisecond");
        assert!(receipts <= RECEIPTS_PER_SEC, "{receipts} receipts in the last second");
        // It stops reading: the writer keeps draining as passes come, and stops at the
        // allowance (plus what one pass adds).
        let read = o.read_total;
        for _ in 0..2_000 {
            pass(&mut publisher, &mut seq, trades);
            o.drain(&metrics, 256 * 1024, clock.as_ref(), None);
            clock.advance(Duration::from_nanos(1_000_000));
        }
        let unread = o.queued_total - read;
        assert!(unread <= allowance + largest, "{unread} bytes unread, allowance {allowance}");
        assert!(unread >= allowance, "it had the allowance: {unread}");
    }
}

/// A client whose rate wavers about what grew its allowance keeps it: 13 receipts a second
/// through the start grows it, and seconds at 7 through the start (3.5 through the grown
/// one) do not shrink it back, so it is not grown and shrunk every other second.
#[test]
fn a_reader_whose_rate_wavers_about_the_growth_keeps_its_allowance() {
    let (mut publisher, mut o, _channel) = following(1024 * 1024);
    let metrics = Metrics::default();
    let clock = ManualClock::new(UnixNanos(1_000_000_000));
    let mut seq = 0;
    let mut allowances = Vec::new();
    // Seconds of 13 trades a millisecond (64 bytes each: 832 KB a second), then of 7.
    for trades in [13, 13, 7, 13, 7, 7, 13, 7] {
        for _ in 0..1_000 {
            pass(&mut publisher, &mut seq, trades);
            o.drain(&metrics, 256 * 1024, clock.as_ref(), None);
            clock.advance(Duration::from_nanos(500_000));
            client_reads(&mut o, clock.now().0);
            clock.advance(Duration::from_nanos(500_000));
        }
        allowances.push(o.allowance() / 1024);
    }
    assert_eq!(allowances, [128, 256, 256, 256, 256, 256, 256, 256]);
}

/// The client reads everything written and answers the newest ping it read, at `now`.
fn client_reads(o: &mut Outbox, now: u64) {
    let ping_opcode = 0x80 | Opcode::Ping as u8;
    let pings: Vec<Bytes> = o.out.drain(..).filter(|f| f[0] == ping_opcode).collect();
    o.out_bytes = 0;
    if let Some(newest) = pings.last() {
        o.pong(&newest[protocol::frame_header_len(newest)..], now, &POOL);
    }
}

/// A client that reads, but needs more in flight than it has (one 100 ms away that reads
/// everything at once), is held, released, and its allowance doubles each time up to the
/// most allowed; once it needs little again (it reads a little along every millisecond),
/// the allowance halves back to the start.
#[test]
fn the_allowance_grows_for_a_client_that_needs_it_and_shrinks_when_it_does_not() {
    let (mut publisher, mut o, _channel) = following(512 * 1024);
    let metrics = Metrics::default();
    let clock = ManualClock::new(UnixNanos(1_000_000_000));
    let mut seq = 0;
    let mut allowances = vec![o.allowance() / 1024];
    // Rounds of: `passes` hub passes of `trades` drained as they come, then `wait`, then
    // the client reads everything written and answers the newest ping.
    let mut rounds = |n: usize, (passes, trades): (usize, u64), wait: Duration| {
        for _ in 0..n {
            for _ in 0..passes {
                pass(&mut publisher, &mut seq, trades);
                o.drain(&metrics, 256 * 1024, clock.as_ref(), None);
            }
            clock.advance(wait);
            client_reads(&mut o, clock.now().0);
            allowances.push(o.allowance() / 1024);
        }
    };
    // Far away: a round trip's worth of passes (about 640 KB) between reads, the pong
    // 100 ms after; the writer sends what the allowance lets it.
    rounds(20, (500, 20), Duration::from_millis(100));
    // Then reading along every millisecond, two trades a millisecond (a receipt a second
    // through twice the start).
    rounds(8_000, (1, 2), Duration::from_millis(1));
    allowances.dedup();
    // (The backlog the far client left may grow it once more while it is caught up.)
    assert_eq!(allowances[..3], [128, 256, 512], "{allowances:?}");
    assert_eq!(allowances.last(), Some(&128), "{allowances:?}");
}

/// Held, then released by the pong of its newest receipt at `now`: whether it was held.
fn hold_and_release(o: &mut Outbox, pool: &AllowancePool, now: u64) -> bool {
    let metrics = Metrics::default();
    o.queue(Bytes::from(vec![0u8; o.allowance() as usize]), 1);
    o.drain(&metrics, usize::MAX, &WallClock, None);
    let ping = newest_receipt(o);
    o.out.clear();
    o.out_bytes = 0;
    o.pong(&ping, now, pool)
}

/// Growth comes from one pool: once connections that grew have spent it, another one
/// held back stays at its start (thousands of clients freezing at once cost at most the
/// pool beyond their starts), and growth given back by shrinking serves the next.
#[test]
fn allowances_grow_from_one_shared_pool_and_give_it_back() {
    let s = ALLOWANCE_START;
    let pool = AllowancePool::new(3 * s);
    let (mut a, mut b) = (outbox(Format::Binary), outbox(Format::Binary));
    assert!(hold_and_release(&mut a, &pool, 0));
    assert!(hold_and_release(&mut a, &pool, 0));
    assert_eq!((a.allowance(), pool.used()), (4 * s, 3 * s));
    assert!(hold_and_release(&mut b, &pool, 0));
    assert_eq!(b.allowance(), s, "the pool is spent: no growth");
    // `a` needs little for a second: it halves and gives 2 s back; `b` may grow.
    let second = 1_000_000_000;
    o_reads_along(&mut a, &pool, second);
    assert_eq!((a.allowance(), pool.used()), (2 * s, s));
    assert!(hold_and_release(&mut b, &pool, second));
    assert_eq!((b.allowance(), pool.used()), (2 * s, 2 * s));
    // A connection that ends gives back what it took (`Link`'s drop).
    assert_eq!(b.lent(), s);
    pool.give(b.lent());
    assert_eq!(pool.used(), s);
}

/// A little data, read at once, its receipt answered at `now` (nothing held).
fn o_reads_along(o: &mut Outbox, pool: &AllowancePool, now: u64) {
    let metrics = Metrics::default();
    o.queue(Bytes::from(vec![0u8; 10]), 1);
    o.drain(&metrics, usize::MAX, &WallClock, None);
    let ping = o.receipt_ping();
    let payload = ping[protocol::frame_header_len(&ping)..].to_vec();
    o.out.clear();
    o.out_bytes = 0;
    assert!(!o.pong(&payload, now, pool));
}

/// A client that stops reading is held at its allowance and never drained again, so it
/// never falls behind the rings: held for `held_max` without a receipt that releases it,
/// it is closed as a slow consumer (4008, counted); one released before that is not.
#[test]
fn a_client_held_too_long_is_closed_as_a_slow_consumer() {
    let metrics = Metrics::default();
    let slow_closes = || metrics.ws_slow_closes_total.load(std::sync::atomic::Ordering::Relaxed);
    let mut o = outbox(Format::Binary);
    o.held_max = Duration::from_millis(50);
    o.queue(Bytes::from(vec![0u8; ALLOWANCE_START as usize]), 1);
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert!(o.held && o.closing.is_none(), "held, not closed yet");
    // Released within the time: the clock starts again at the next hold.
    let ping = newest_receipt(&o);
    assert!(o.pong(&ping, 0, &POOL));
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert!(!o.held && o.held_since.is_none());
    // (The release doubled the allowance.)
    o.queue(Bytes::from(vec![0u8; o.allowance() as usize]), 1);
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert!(o.held);
    std::thread::sleep(Duration::from_millis(20));
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert!(o.closing.is_none(), "20 ms held: still open");
    std::thread::sleep(Duration::from_millis(40));
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert_eq!(o.closing, Some(Closing::Send(close::SLOW_CONSUMER, "slow consumer")));
    o.drain(&metrics, usize::MAX, &WallClock, None);
    assert_eq!(slow_closes(), 1, "counted once");
}

/// A quiet subscription gets its heartbeat one interval after its last message, and the
/// connection looks again exactly when the next one is due (on a fixed tick, a channel
/// that went quiet just after a tick waited almost two intervals).
#[test]
fn a_quiet_subscription_gets_its_heartbeat_one_interval_after_its_last_message() {
    let (_publisher, mut o, channel) = following(1024 * 1024);
    let clock = ManualClock::new(UnixNanos(1_000));
    let interval = Duration::from_secs(5);
    let sent = o.subs[0].last_sent;
    let just_before = sent + interval - Duration::from_millis(1);
    assert_eq!(o.heartbeats(just_before, interval, clock.as_ref()), sent + interval);
    assert!(o.out.is_empty(), "not quiet for a whole interval yet");

    assert_eq!(o.heartbeats(sent + interval, interval, clock.as_ref()), sent + interval * 2);
    let mut expected = Vec::new();
    bin::heartbeat(&mut expected, channel.id, o.subs[0].last_seq, 1_000);
    let (_, frames) = queued(&o);
    assert_eq!(frames, vec![(Opcode::Binary as u8, expected)], "one heartbeat, last sequence");

    // Nothing followed: look again one interval from now, so a new subscription is seen.
    o.subs.clear();
    let now = sent + interval * 3;
    assert_eq!(o.heartbeats(now, interval, clock.as_ref()), now + interval);
}

/// Snapshots go out whatever the hold, but what the allowance does not cover is lent by
/// the shared pool, at most `unread_max` per connection, and repaid as the client
/// confirms reading (or when the connection ends): a client that subscribes to
/// everything at full depth and never reads cannot take more than that.
#[test]
fn snapshots_beyond_the_allowance_are_lent_by_the_pool_and_repaid_as_read() {
    let metrics = Metrics::default();
    let kib = 1024;
    let pool = AllowancePool::new(600 * kib);
    // On trial (32 KiB), at most 1 MiB of growth or loan.
    let mut o = outbox(Format::Json).on_trial();
    assert!(o.room_for_snapshots(20 * kib, &pool), "within the allowance");
    assert_eq!((o.lent(), pool.used()), (0, 0));
    o.push(Bytes::from(vec![0u8; 20 * kib as usize]), 1);
    assert!(o.room_for_snapshots(500 * kib, &pool));
    assert_eq!((o.lent(), pool.used()), (488 * kib, 488 * kib), "20 + 500 - 32 KiB lent");
    o.push(Bytes::from(vec![0u8; 500 * kib as usize]), 1);
    // The pool has not that much left for another connection.
    let mut other = outbox(Format::Json).on_trial();
    assert!(!other.room_for_snapshots(200 * kib, &pool), "the pool is spent");
    assert_eq!((other.lent(), pool.used()), (0, 488 * kib), "nothing taken");
    // Nor is one connection lent more than `unread_max`, even from a full pool.
    let big = AllowancePool::new(u64::MAX);
    let mut greedy = outbox(Format::Json).on_trial();
    assert!(!greedy.room_for_snapshots(2 * 1024 * kib, &big));
    assert_eq!(big.used(), 0);
    // The client reads it all and confirms: the loan goes back.
    o.drain(&metrics, usize::MAX, &WallClock, None);
    let ping = newest_receipt(&o);
    o.pong(&ping, 0, &pool);
    assert_eq!(o.lent(), o.allowance().saturating_sub(ALLOWANCE_START), "no loan left");
    assert_eq!(pool.used(), o.lent());
    assert!(other.room_for_snapshots(200 * kib, &pool), "room again");
}
