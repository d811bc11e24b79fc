//! A client that stops reading while the feed runs hot: the healthy client keeps
//! contiguous sequences, the slow one gets resync snapshots and gap notices and is finally
//! closed as a slow consumer (4008), everything is counted, and memory stays bounded.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::json;
use tickgate_engine::{OrderType, Side};
use tickgate_gateway::client::Message;
use tickgate_gateway::protocol::{self, MsgType};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The book and trades channels of every default instrument.
fn all_book_and_trades() -> Vec<String> {
    let symbols =
        ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "DOGE-USD", "ADA-USD", "AVAX-USD", "LINK-USD"];
    symbols.iter().flat_map(|s| [format!("book.{s}"), format!("trades.{s}")]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_conflated_gapped_and_closed_while_others_stay_contiguous() {
    let server = start(|c| {
        c.feed_rate = Some(50_000);
        c.ws.slow_gaps_max = 2;
        c.channel_ring_chunks = 256;
        c.fanout.min_pass = Duration::from_micros(500);
        c.ws.write_stall_timeout = Duration::from_secs(30);
    })
    .await;
    let all = all_book_and_trades();

    // The healthy client follows BTC-USD on its own task and checks every sequence.
    let mut healthy = connect(&server, "").await;
    let ack = request(
        &mut healthy,
        json!({"op": "subscribe", "channels": ["book.BTC-USD", "trades.BTC-USD"]}),
    )
    .await;
    let ids: Vec<u32> = ack["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel_id"].as_u64().unwrap() as u32)
        .collect();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let healthy_task = tokio::spawn(async move {
        let mut f =
            Follower { book_channel: ids[0], trades_channel: ids[1], ..Follower::default() };
        loop {
            tokio::select! {
                _ = &mut stop_rx => return f,
                m = next(&mut healthy) => if let Message::Binary(p) = m { f.apply(&p) },
            }
        }
    });

    let mut slow = tickgate_gateway::client::connect_with(server.local_addr(), "/ws", Some(4096))
        .await
        .expect("connects");
    assert_eq!(text(&mut slow).await["op"], "welcome");
    let ack = request(&mut slow, json!({"op": "subscribe", "channels": all, "depth": 10})).await;
    assert_eq!(ack["op"], "subscribed");
    let rss_before = rss_bytes();

    let (mut resync_snapshots, mut gap_notices, mut close_code) = (0u32, 0u32, None);
    let mut read_error = None;
    'cycles: for _ in 0..6 {
        // Stop reading: the socket fills, the writer blocks, the rings move on.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Then read for a while. Data keeps flowing, so each read returns promptly; a read
        // is never cancelled midway (fastwebsockets' read_frame is not cancel-safe).
        let until = tokio::time::Instant::now() + Duration::from_millis(300);
        while tokio::time::Instant::now() < until {
            let m =
                match tokio::time::timeout(WAIT, tickgate_gateway::client::next(&mut slow)).await {
                    Err(_) => panic!("no data for {WAIT:?} while the feed runs"),
                    Ok(Err(e)) => {
                        read_error = Some(e.to_string());
                        break 'cycles;
                    }
                    Ok(Ok(m)) => m,
                };
            match m {
                Message::Binary(p) => {
                    for m in protocol::decode(&p) {
                        let m = m.expect("well-formed");
                        if m.flags & protocol::FLAG_RESYNC != 0 {
                            resync_snapshots += 1;
                        }
                        if m.msg_type == MsgType::Gap {
                            gap_notices += 1;
                        }
                    }
                }
                Message::Close(code, _) => {
                    close_code = code;
                    break 'cycles;
                }
                Message::Text(_) => {}
            }
        }
    }
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "slow client: {resync_snapshots} resyncs, {gap_notices} gaps, close {close_code:?}, error {read_error:?}; rss +{} KiB",
        rss_growth >> 10
    );
    let _ = stop_tx.send(());
    let healthy = healthy_task.await.expect("healthy client never saw a broken sequence");

    assert!(resync_snapshots > 0, "book channels were conflated into resync snapshots");
    assert!(gap_notices > 0, "trades channels announced their gaps");
    assert_eq!(
        close_code,
        Some(protocol::close::SLOW_CONSUMER),
        "persistently slow: closed with 4008"
    );
    assert_eq!(healthy.resyncs, 0, "the healthy client was never resynced");
    assert!(healthy.gaps.is_empty(), "nor gapped");
    assert!(healthy.deltas.len() > 1000, "and kept receiving ({} deltas)", healthy.deltas.len());
    let m = server.metrics();
    assert!(m.ws_resyncs_total.load(Ordering::Relaxed) >= u64::from(resync_snapshots));
    assert!(m.ws_gaps_total.load(Ordering::Relaxed) > 0);
    assert_eq!(m.ws_slow_closes_total.load(Ordering::Relaxed), 1);
    // Bounded by the rings (fixed at start), not by what the slow client did not read.
    assert!(rss_growth < 64 << 20, "memory grew by {} MiB", rss_growth >> 20);
    server.shutdown().await.expect("clean shutdown");
}

/// A client that stops reading is held at its read-receipt allowance and never written
/// again, so it never falls behind the rings: it is closed as a slow consumer (4008) once
/// it has been held for `--write-stall-ms`, and its close frame comes after what it had
/// not read. A client that reads meanwhile is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_write_stall_time() {
    let server = start(|c| {
        c.feed_rate = Some(50_000);
        c.ws.write_stall_timeout = Duration::from_millis(500);
    })
    .await;
    let all = all_book_and_trades();
    let mut reader = connect(&server, "").await;
    let ack =
        request(&mut reader, json!({"op": "subscribe", "channels": ["trades.BTC-USD"]})).await;
    assert_eq!(ack["op"], "subscribed");
    let mut frozen = connect(&server, "").await;
    let ack = request(&mut frozen, json!({"op": "subscribe", "channels": all})).await;
    assert_eq!(ack["op"], "subscribed");
    // `frozen` reads nothing from here on; `reader` keeps reading.
    let m = server.metrics();
    let deadline = tokio::time::Instant::now() + WAIT;
    while m.ws_slow_closes_total.load(Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the frozen client was never closed");
        // The feed keeps this channel busy: each read returns promptly (reads are never
        // cancelled midway: fastwebsockets' read_frame is not cancel-safe).
        let _ = next(&mut reader).await;
    }
    assert_eq!(m.ws_slow_closes_total.load(Ordering::Relaxed), 1);
    assert!(m.ws_receipt_holds_total.load(Ordering::Relaxed) >= 1, "it was held first");
    // What it had not read, then the close frame.
    let close = loop {
        match tokio::time::timeout(WAIT, tickgate_gateway::client::next(&mut frozen)).await {
            Ok(Ok(Message::Close(code, _))) => break code,
            Ok(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(protocol::close::SLOW_CONSUMER));
    eventually(|| m.ws_connections.load(Ordering::Relaxed) == 1).await;
    // The reader is still served.
    assert!(matches!(next(&mut reader).await, Message::Binary(_)));
    server.shutdown().await.expect("clean shutdown");
}

/// Snapshots go out whatever the market data's hold, but a connection gets no more of
/// them than its allowance covers plus what the shared pool lends it: with nothing to
/// lend, a subscribe whose snapshots do not fit is refused (`limit_exceeded`, nothing
/// subscribed) and a smaller one fits. (A client that subscribed to every channel at full
/// depth and never read held up to a megabyte each.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_beyond_the_allowance_need_the_pool() {
    let server = start(|c| {
        c.ws.unread_bytes_start = 16 * 1024; // a trial of 16 KiB
        c.ws.unread_bytes_total = 0; // nothing to lend
    })
    .await;
    let engine = server.engine().clone();
    fund(&engine);
    let eth = symbol_id(&engine, "ETH-USD");
    // 1,200 levels a side: a 1,000-level JSON snapshot is some 40 KB.
    for n in 0..1_200 {
        order(&engine, 1, eth, Side::Buy, OrderType::Limit, 340_000 - n, 1_000);
        order(&engine, 1, eth, Side::Sell, OrderType::Limit, 360_000 + n, 1_000);
    }
    eventually(|| engine.book_snapshot(eth, 1000).is_ok_and(|b| b.bids.len() == 1000)).await;

    let mut ws = connect(&server, "?format=json").await;
    let full = json!({"op": "subscribe", "id": 1, "channels": ["book.ETH-USD"], "depth": 1000});
    let refused = request(&mut ws, full).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("limit_exceeded")),
        "{refused}"
    );
    let small = json!({"op": "subscribe", "id": 2, "channels": ["book.ETH-USD"], "depth": 10});
    let ack = request(&mut ws, small).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    server.shutdown().await.expect("clean shutdown");
}
