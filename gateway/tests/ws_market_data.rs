//! Market data over real WebSockets: snapshot then contiguous deltas, the rebuilt book
//! equals the engine's, binary and JSON carry the same content, heartbeats, shutdown.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tickgate_engine::types::parse_fixed;
use tickgate_engine::*;
use tickgate_gateway::candles::Candle;
use tickgate_gateway::client::{Client, Message};
use tickgate_gateway::protocol::{self, MsgType};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_deltas_rebuild_the_engine_book_in_binary_and_json() {
    rebuild_books(1, &["BTC-USD", "ETH-USD"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_rebuild_across_engine_shards() {
    // Instrument i lives on shard i % 3: these three are on three different shards.
    rebuild_books(3, &["BTC-USD", "ETH-USD", "SOL-USD"]).await;
}

async fn rebuild_books(shards: usize, symbols: &[&str]) {
    let mut server = start(|c| {
        c.feed_rate = Some(20_000);
        c.shards = shards;
        // The JSON client is read only after the binary one is done: let it hold the
        // whole run unread (with a smaller allowance it could be held back, fall behind
        // the rings and be resynced, as a slow consumer is).
        c.ws.unread_bytes_max = 64 << 20;
        c.ws.unread_bytes_start = 64 << 20;
    })
    .await;
    let mut bin = connect(&server, "").await;
    let mut jsn = connect(&server, "?format=json").await;
    let channels: Vec<String> =
        symbols.iter().flat_map(|s| [format!("book.{s}"), format!("trades.{s}")]).collect();
    let sub = json!({"op": "subscribe", "id": 1, "channels": channels, "depth": 1000});
    let ack = request(&mut bin, sub.clone()).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    assert_eq!(ack["channels"].as_array().map(Vec::len), Some(symbols.len() * 2));
    let ack_json = request(&mut jsn, sub).await;
    assert_eq!(ack_json["op"], "subscribed");

    let id = |name: &str| {
        ack["channels"].as_array().unwrap().iter().find(|c| c["channel"] == name).unwrap()
            ["channel_id"]
            .as_u64()
            .unwrap() as u32
    };
    let mut followers: Vec<Follower> = symbols
        .iter()
        .map(|s| Follower {
            book_channel: id(&format!("book.{s}")),
            trades_channel: id(&format!("trades.{s}")),
            ..Follower::default()
        })
        .collect();

    // Let the market run, then stop it and wait until the client has every delta.
    // A connection gets what is new on all its channels in one frame per write.
    let mut mixed_frames = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        if let Message::Binary(p) = next(&mut bin).await {
            followers.iter_mut().for_each(|f| f.apply(&p));
            let channels: std::collections::HashSet<u32> =
                protocol::decode(&p).map(|m| m.expect("valid").channel).collect();
            mixed_frames += usize::from(channels.len() > 1);
        }
    }
    assert!(mixed_frames > 0, "frames carry messages of several channels");
    server.stop_feed();
    let engine = server.engine().clone();
    let expected: Vec<BookSnapshot> = symbols
        .iter()
        .map(|s| engine.book_snapshot(symbol_id(&engine, s), usize::MAX).expect("engine answers"))
        .collect();
    // Every frame goes to every follower: a frame carries messages of several channels.
    while followers
        .iter()
        .zip(&expected)
        .any(|(f, e)| f.book.as_ref().map(|b| b.seq()) != Some(e.seq))
    {
        if let Message::Binary(p) = next(&mut bin).await {
            followers.iter_mut().for_each(|f| f.apply(&p));
        }
    }
    for ((f, s), expected) in followers.iter().zip(symbols.iter().copied()).zip(expected) {
        let mine = f.book.as_ref().expect("book").snapshot(usize::MAX);
        assert_eq!(mine, expected, "{s}: snapshot + deltas == engine book at seq {}", expected.seq);
        assert!(f.deltas.len() > 50, "{s}: a lively market ({} deltas)", f.deltas.len());
        assert!(f.trades > 5, "{s}: trades flowed ({})", f.trades);
        assert_eq!(f.resyncs, 0);
    }

    // The JSON client saw the same deltas for BTC-USD (compare the overlapping range).
    let btc = engine.instrument_by_symbol("BTC-USD").expect("btc").clone();
    let mut json_deltas: Vec<(u64, Side, i64, i64)> = Vec::new();
    let mut json_mixed = 0;
    let last_bin = followers[0].deltas.last().expect("deltas").0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while json_deltas.last().is_none_or(|(s, ..)| *s < last_bin) {
        // Heartbeats keep coming: a JSON stream that never reaches the end fails here.
        assert!(tokio::time::Instant::now() < deadline, "the JSON client reaches {last_bin}");
        let Message::Text(t) = next(&mut jsn).await else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&t).expect("json");
        let names: std::collections::HashSet<&str> =
            v.as_array().into_iter().flatten().filter_map(|m| m["channel"].as_str()).collect();
        json_mixed += usize::from(names.len() > 1);
        for m in v.as_array().into_iter().flatten() {
            if m["type"] == "book_delta" && m["channel"] == "book.BTC-USD" {
                let side = if m["side"] == "buy" { Side::Buy } else { Side::Sell };
                let price =
                    parse_fixed(m["price"].as_str().unwrap(), btc.spec.price_precision).unwrap();
                let qty = parse_fixed(m["qty"].as_str().unwrap(), btc.spec.qty_precision).unwrap();
                json_deltas.push((m["seq"].as_u64().unwrap(), side, price, qty));
            }
        }
    }
    assert!(json_mixed > 0, "JSON frames are arrays of several channels' messages");
    let first_json = json_deltas[0].0;
    let bin_tail: Vec<_> =
        followers[0].deltas.iter().filter(|d| d.0 >= first_json).cloned().collect();
    assert!(bin_tail.len() > 10, "overlap is meaningful");
    assert_eq!(
        json_deltas[..bin_tail.len()],
        bin_tail[..],
        "binary and JSON carry the same deltas"
    );
    // The writers' rounds that carried all this are in /metrics, as a histogram whose
    // buckets count up to its total.
    let head = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (status, metrics) = http_raw(server.local_addr(), head).await;
    assert_eq!(status, 200);
    let value =
        |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok());
    let rounds = value("tickgate_fanout_round_seconds_count ").expect("a round count");
    assert!(rounds >= 1.0, "{metrics}");
    assert_eq!(value("tickgate_fanout_round_seconds_bucket{le=\"+Inf\"} "), Some(rounds));
    assert!(value("tickgate_fanout_round_seconds_sum ").is_some_and(|s| s > 0.0), "{metrics}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_an_interval_gets_everything_in_fewer_frames() {
    let mut server = start(|c| c.feed_rate = Some(20_000)).await;
    let mut slow = connect(&server, "?interval_ms=200").await;
    let mut fast = connect(&server, "").await;
    let sub = json!({"op": "subscribe", "channels": ["book.BTC-USD", "trades.BTC-USD"]});
    let ack = request(&mut slow, sub.clone()).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    assert_eq!(request(&mut fast, sub).await["op"], "subscribed");
    let ids: Vec<u32> =
        (0..2).map(|n| ack["channels"][n]["channel_id"].as_u64().unwrap() as u32).collect();
    let mut followers = [Follower::default(), Follower::default()];
    for f in &mut followers {
        (f.book_channel, f.trades_channel) = (ids[0], ids[1]);
    }
    // Two seconds of a lively market on both connections (the fast one read in turn, so
    // it never falls behind).
    let (mut frames, mut fast_frames) = (0, 0);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        tokio::select! {
            m = next(&mut slow) => if let Message::Binary(p) = m {
                followers[0].apply(&p);
                frames += 1;
            },
            m = next(&mut fast) => if let Message::Binary(p) = m {
                followers[1].apply(&p);
                fast_frames += 1;
            },
        }
    }
    let elapsed = started.elapsed().as_millis();
    server.stop_feed();
    // Writes at least 200 ms apart (the subscribe answer's snapshot may come on its own).
    assert!(frames >= 2, "market data flowed ({frames} frames)");
    // (+4: the subscribe snapshots, sent by the connection itself, and the first write.)
    assert!(frames as u128 <= elapsed / 200 + 4, "{frames} frames in {elapsed} ms");
    assert!(fast_frames > frames * 3, "the default writes as it comes ({fast_frames} frames)");
    // Nothing was lost: the book and trades are contiguous (`apply` checks each sequence)
    // and the slow connection catches up with the same book.
    let engine = server.engine().clone();
    let expected = engine.book_snapshot(symbol_id(&engine, "BTC-USD"), usize::MAX).unwrap();
    for (f, ws) in followers.iter_mut().zip([&mut slow, &mut fast]) {
        while f.book.as_ref().map(|b| b.seq()) != Some(expected.seq) {
            if let Message::Binary(p) = next(ws).await {
                f.apply(&p);
            }
        }
        assert_eq!(f.book.as_ref().unwrap().snapshot(usize::MAX), expected);
        assert_eq!((f.resyncs, f.gaps.len()), (0, 0));
    }
    assert!(followers[0].trades > 5 && followers[0].deltas.len() > 50);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_interval_never_costs_data() {
    // A ring of 16 chunks: a second's hold would lap it many times over.
    let mut server = start(|c| {
        c.feed_rate = Some(20_000);
        c.channel_ring_chunks = 16;
    })
    .await;
    let mut ws = connect(&server, "?interval_ms=1000").await;
    let sub = json!({"op": "subscribe", "channels": ["book.BTC-USD", "trades.BTC-USD"]});
    let ack = request(&mut ws, sub).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    let mut f = Follower {
        book_channel: ack["channels"][0]["channel_id"].as_u64().unwrap() as u32,
        trades_channel: ack["channels"][1]["channel_id"].as_u64().unwrap() as u32,
        ..Follower::default()
    };
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        if let Message::Binary(p) = next(&mut ws).await {
            f.apply(&p);
        }
    }
    server.stop_feed();
    let engine = server.engine().clone();
    let expected = engine.book_snapshot(symbol_id(&engine, "BTC-USD"), usize::MAX).unwrap();
    while f.book.as_ref().map(|b| b.seq()) != Some(expected.seq) {
        if let Message::Binary(p) = next(&mut ws).await {
            f.apply(&p);
        }
    }
    assert_eq!(f.book.as_ref().unwrap().snapshot(usize::MAX), expected);
    assert_eq!((f.resyncs, f.gaps.len()), (0, 0), "held, but never lapped");
    assert!(f.deltas.len() > 100 && f.trades > 10);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_channels_get_heartbeats_with_their_last_sequence() {
    let server = start(|c| c.ws.heartbeat_interval = Duration::from_millis(100)).await;
    let engine = server.engine().clone();
    fund(&engine);
    let sol = symbol_id(&engine, "SOL-USD");
    order(&engine, 1, sol, Side::Sell, OrderType::Limit, 15_000, 100);
    order(&engine, 2, sol, Side::Buy, OrderType::Limit, 15_000, 40);
    let mut ws = connect(&server, "").await;
    eventually(|| server.directory().get("trades.SOL-USD").unwrap().last_seq() == 1).await;
    let ack =
        request(&mut ws, json!({"op": "subscribe", "channels": ["trades.SOL-USD", "bbo.SOL-USD"]}))
            .await;
    assert_eq!(ack["channels"][0]["seq"], 1, "{ack}");
    let mut heartbeats = std::collections::HashMap::new();
    while heartbeats.len() < 2 {
        if let Message::Binary(p) = next(&mut ws).await {
            for m in protocol::decode(&p) {
                let m = m.expect("valid");
                if m.msg_type == MsgType::Heartbeat {
                    heartbeats.insert(m.channel, m.seq);
                }
            }
        }
    }
    let trades_id = ack["channels"][0]["channel_id"].as_u64().unwrap() as u32;
    assert_eq!(heartbeats[&trades_id], 1, "heartbeat carries the last trade sequence");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_1001() {
    let server = start(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let stopping = tokio::spawn(server.shutdown());
    loop {
        match next(&mut ws).await {
            Message::Close(code, _) => {
                assert_eq!(code, Some(protocol::close::GOING_AWAY));
                break;
            }
            _ => continue,
        }
    }
    stopping.await.expect("task").expect("clean shutdown");
}

/// Subscriptions are counted once and released however they end: a name given twice,
/// a resubscribe, an unsubscribe, and a closed connection, in binary and JSON. (The
/// counts decide, among other things, whether JSON is encoded at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_counted_once_and_released() {
    let server = start(|c| c.feed_rate = Some(5_000)).await;
    let count = |name: &str| server.directory().get(name).expect("channel").subscribers();
    for query in ["", "?format=json"] {
        let mut ws = connect(&server, query).await;
        let ack = request(
            &mut ws,
            json!({"op": "subscribe", "id": 1, "channels": ["book.BTC-USD", "book.BTC-USD", "trades.BTC-USD"]}),
        )
        .await;
        assert_eq!(ack["channels"].as_array().map(Vec::len), Some(2), "one ack each: {ack}");
        assert_eq!((count("book.BTC-USD"), count("trades.BTC-USD")), (1, 1), "{query}");
        // Resubscribing gives a fresh snapshot, not a second subscription.
        let again =
            request(&mut ws, json!({"op": "subscribe", "id": 2, "channels": ["book.BTC-USD"]}))
                .await;
        assert_eq!(again["op"], "subscribed");
        assert_eq!(count("book.BTC-USD"), 1);
        let left =
            request(&mut ws, json!({"op": "unsubscribe", "id": 3, "channels": ["trades.BTC-USD"]}))
                .await;
        assert_eq!(left["op"], "unsubscribed", "{left}");
        assert_eq!((count("book.BTC-USD"), count("trades.BTC-USD")), (1, 0));
        // Data still flows on what is left, through the writer.
        let mut deltas = 0;
        while deltas < 20 {
            match next(&mut ws).await {
                Message::Binary(p) => {
                    for m in protocol::decode(&p) {
                        let m = m.expect("well-formed");
                        assert_ne!(m.msg_type, MsgType::Trade, "unsubscribed trades stop");
                        deltas += usize::from(m.msg_type == MsgType::BookDelta);
                    }
                }
                Message::Text(t) => {
                    assert!(!t.contains("\"trade\""), "unsubscribed trades stop: {t}");
                    deltas += t.matches("\"book_delta\"").count();
                }
                Message::Close(code, reason) => panic!("closed: {code:?} {reason}"),
            }
        }
        drop(ws);
        eventually(|| count("book.BTC-USD") == 0).await;
    }
    server.shutdown().await.expect("clean shutdown");
}

/// Candles kept by a client: a snapshot, then each update replaces the candle with its
/// start or appends.
#[derive(Default)]
struct CandleFollower {
    candles: Vec<Candle>,
    seq: Option<u64>,
    updates: usize,
}

impl CandleFollower {
    fn apply(&mut self, seq: u64, snapshot: bool, candles: Vec<Candle>) {
        if snapshot {
            self.candles.clear();
        } else {
            assert_eq!(Some(seq), self.seq.map(|s| s + 1), "contiguous candle sequence");
            self.updates += 1;
        }
        self.seq = Some(seq);
        for c in candles {
            match self.candles.last_mut() {
                Some(last) if last.start == c.start => *last = c,
                Some(last) => {
                    assert!(c.start > last.start, "candles move forward");
                    self.candles.push(c);
                }
                None => self.candles.push(c),
            }
        }
    }
}

fn candle_from_json(c: &serde_json::Value, i: &Instrument) -> Candle {
    let fixed = |v: &serde_json::Value, p| parse_fixed(v.as_str().unwrap(), p).unwrap();
    let (pp, qp) = (i.spec.price_precision, i.spec.qty_precision);
    Candle {
        start: c["start"].as_u64().unwrap(),
        open: fixed(&c["open"], pp),
        high: fixed(&c["high"], pp),
        low: fixed(&c["low"], pp),
        close: fixed(&c["close"], pp),
        volume: fixed(&c["volume"], qp),
        trades: c["trades"].as_u64().unwrap(),
    }
}

/// Follows the binary client's candles channels (`followers`, by id - 65536) and the JSON
/// client's `candles.BTC-USD.1s` until `done`.
async fn read_candles(
    bin: &mut Client,
    jsn: &mut Client,
    followers: &mut [CandleFollower; 3],
    btc: &Instrument,
    done: impl Fn(&[CandleFollower; 3]) -> bool,
) {
    while !done(followers) {
        tokio::select! {
            m = next(bin) => if let Message::Binary(p) = m {
                for m in protocol::decode(&p) {
                    let m = m.expect("valid");
                    if !matches!(m.msg_type, MsgType::Candle | MsgType::CandlesSnapshot) {
                        continue; // a heartbeat
                    }
                    let candles = protocol::decode_candles(&m).expect("candles body");
                    let snapshot = m.msg_type == MsgType::CandlesSnapshot;
                    followers[(m.channel - 65536) as usize].apply(m.seq, snapshot, candles);
                }
            },
            m = next(jsn) => if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                for m in v.as_array().into_iter().flatten() {
                    if m["type"] == "heartbeat" {
                        continue;
                    }
                    let snapshot = m["type"] == "candles_snapshot";
                    let candles = match snapshot {
                        true => m["candles"].as_array().unwrap().iter().collect(),
                        false => vec![&m["candle"]],
                    };
                    let candles = candles.into_iter().map(|c| candle_from_json(c, btc)).collect();
                    followers[2].apply(m["seq"].as_u64().unwrap(), snapshot, candles);
                }
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_channels_rebuild_the_rest_candles_in_binary_and_json() {
    let mut server = start(|c| c.feed_rate = Some(20_000)).await;
    let mut bin = connect(&server, "").await;
    let mut jsn = connect(&server, "?format=json").await;
    // (Before the subscriptions: `request` skips binary frames, snapshots included.)
    for bad in ["candles.BTC-USD.2m", "candles.BTC-USD", "candles.NOPE.1m"] {
        let e = request(&mut bin, json!({"op": "subscribe", "channels": [bad]})).await;
        let code = if bad.contains("NOPE") { "unknown_symbol" } else { "unknown_channel" };
        assert_eq!(e["code"], code, "{bad}: {e}");
    }
    let names = ["candles.BTC-USD.1s", "candles.BTC-USD.1m"];
    let sub = json!({"op": "subscribe", "channels": names, "depth": 1000});
    let ack = request(&mut bin, sub).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    assert_eq!(
        (&ack["channels"][0]["channel_id"], &ack["channels"][1]["channel_id"]),
        (&json!(65536), &json!(65537))
    );
    let sub = json!({"op": "subscribe", "channels": [names[0]], "depth": 1000});
    assert_eq!(request(&mut jsn, sub).await["op"], "subscribed");
    let btc = server.engine().instrument_by_symbol("BTC-USD").expect("btc").clone();
    let mut followers: [CandleFollower; 3] = Default::default();
    let started = tokio::time::Instant::now();
    let running = |_: &[CandleFollower; 3]| started.elapsed() > Duration::from_millis(2500);
    read_candles(&mut bin, &mut jsn, &mut followers, &btc, running).await;
    server.stop_feed();
    // Caught up: every channel's last sequence reached.
    let last: Vec<u64> =
        names.iter().map(|n| server.directory().get(n).unwrap().last_seq()).collect();
    let caught_up = |f: &[CandleFollower; 3]| {
        (f[0].seq, f[1].seq, f[2].seq) == (Some(last[0]), Some(last[1]), Some(last[0]))
    };
    read_candles(&mut bin, &mut jsn, &mut followers, &btc, caught_up).await;
    for (n, name) in names.iter().enumerate() {
        let interval = name.rsplit('.').next().unwrap();
        let path = format!("/api/v1/markets/BTC-USD/candles?interval={interval}&limit=1000");
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, response) = http_raw(server.local_addr(), &head).await;
        assert_eq!(status, 200, "{response}");
        let rest: Vec<Candle> = body_json(&response)["candles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| candle_from_json(c, &btc))
            .collect();
        assert!(rest.iter().map(|c| c.trades).sum::<u64>() > 5, "{name}: trades made candles");
        assert_eq!(followers[n].candles, rest, "{name}: snapshot + updates == REST");
        assert!(followers[n].updates > 0, "{name}: updates came");
        if n == 0 {
            assert!(rest.len() >= 2, "two seconds and a half make several 1 s candles");
            assert_eq!(followers[2].candles, rest, "JSON carries the same candles");
        }
    }
    server.shutdown().await.expect("clean shutdown");
}

/// The writers rest as `--fanout-round-rest-pct` says: a fixed share rests after the rounds
/// that wrote (counted in `tickgate_fanout_rests_total`), `0` never does, and the data
/// flows either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_rest_as_their_policy_says() {
    use std::sync::atomic::Ordering;
    use tickgate_gateway::fanout::RestPolicy;
    for (policy, rests) in [(RestPolicy::Fixed(25), true), (RestPolicy::Fixed(0), false)] {
        let server = start(|c| {
            c.feed_rate = Some(5_000);
            c.fanout_round_rest_pct = policy;
        })
        .await;
        let mut ws = connect(&server, "").await;
        let sub =
            json!({"op": "subscribe", "id": 1, "channels": ["trades.BTC-USD", "book.BTC-USD"]});
        assert_eq!(request(&mut ws, sub).await["op"], "subscribed");
        let mut frames = 0;
        while frames < 20 {
            if let Message::Binary(_) = next(&mut ws).await {
                frames += 1;
            }
        }
        let taken = server.metrics().fanout_rests_total.load(Ordering::Relaxed);
        assert_eq!(taken > 0, rests, "{policy}: {taken} rests after {frames} frames");
        server.shutdown().await.expect("clean shutdown");
    }
}

/// The JSON snapshots of SOL-USD's best bid/offer and trades channels.
async fn bbo_and_trades_snapshots(
    server: &tickgate_gateway::Server,
) -> (serde_json::Value, serde_json::Value) {
    let mut ws = connect(server, "?format=json").await;
    let channels = json!(["bbo.SOL-USD", "trades.SOL-USD"]);
    let ack = request(&mut ws, json!({"op": "subscribe", "channels": channels})).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    let (mut bbo, mut trades) = (None, None);
    // (Heartbeats come every 5 s: a snapshot missing would not end in a timeout.)
    for _ in 0..4 {
        for m in text(&mut ws).await.as_array().cloned().unwrap_or_default() {
            match m["type"].as_str() {
                Some("bbo") if m["snapshot"] == true => bbo = Some(m),
                Some("trades_snapshot") => trades = Some(m),
                _ => {}
            }
        }
        if bbo.is_some() && trades.is_some() {
            break;
        }
    }
    (bbo.expect("bbo"), trades.expect("trades"))
}

/// After a restart on the same data directory, the best bid/offer channel starts at the
/// top and sequence it had (it started at 0 with an empty market), and the trades channel
/// with its recent trades (it started empty at its old sequence), also when the engine's
/// last snapshot came after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bbo_and_trades_channels_continue_across_a_restart() {
    use tickgate_engine::durable::DurabilityConfig;
    let dir = std::env::temp_dir().join(format!("tickgate-restart-md-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = start(|c| c.durability = Some(DurabilityConfig::new(&dir))).await;
    let engine = server.engine().clone();
    fund(&engine);
    let sol = symbol_id(&engine, "SOL-USD");
    order(&engine, 1, sol, Side::Sell, OrderType::Limit, 15_000, 100);
    order(&engine, 2, sol, Side::Buy, OrderType::Limit, 15_000, 40);
    order(&engine, 2, sol, Side::Buy, OrderType::Limit, 14_900, 30);
    order(&engine, 2, sol, Side::Buy, OrderType::Limit, 15_000, 10);
    eventually(|| server.directory().get("trades.SOL-USD").unwrap().last_seq() == 2).await;
    eventually(|| server.directory().get("bbo.SOL-USD").unwrap().last_seq() >= 3).await;
    let (bbo, trades) = bbo_and_trades_snapshots(&server).await;
    assert_eq!(bbo["bid_price"], "149.00", "{bbo}");
    assert_eq!(trades["trades"].as_array().map(Vec::len), Some(2), "{trades}");
    server.shutdown().await.expect("clean shutdown");

    let server = start(|c| c.durability = Some(DurabilityConfig::new(&dir))).await;
    let (bbo_after, trades_after) = bbo_and_trades_snapshots(&server).await;
    for field in ["seq", "ts", "bid_price", "bid_qty", "ask_price", "ask_qty"] {
        assert_eq!(bbo_after[field], bbo[field], "{field}: {bbo_after} against {bbo}");
    }
    assert_eq!(trades_after, trades, "the tape as it was");
    server.shutdown().await.expect("clean shutdown");

    // A snapshot after the trades: the journal's replay starts past them, and the tape
    // comes from the candles store's file.
    let durability = DurabilityConfig { snapshot_every: 1, ..DurabilityConfig::new(&dir) };
    let shard_dir = durability.shard_dir(0);
    let snapshots = || {
        std::fs::read_dir(&shard_dir)
            .map(|d| {
                d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tgs")).count()
            })
            .unwrap_or(0)
    };
    let before = snapshots();
    let server = start(|c| c.durability = Some(durability.clone())).await;
    let engine = server.engine().clone();
    order(&engine, 2, sol, Side::Buy, OrderType::Limit, 10_000, 10);
    eventually(|| snapshots() > before).await;
    server.shutdown().await.expect("clean shutdown");
    let server = start(|c| c.durability = Some(DurabilityConfig::new(&dir))).await;
    let (bbo_after, trades_after) = bbo_and_trades_snapshots(&server).await;
    for field in ["seq", "bid_price", "bid_qty", "ask_price", "ask_qty"] {
        assert_eq!(bbo_after[field], bbo[field], "{field}: {bbo_after} against {bbo}");
    }
    assert_eq!(trades_after["trades"], trades["trades"], "the tape as it was");
    server.shutdown().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
