//! A client that only pauses (its socket fills, so its task takes the writing over from
//! the fan-out writer, then hands it back) loses nothing and sees nothing twice. In a test
//! binary of its own: its long rings would disturb the memory bound checked in
//! `ws_backpressure`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::json;
use tickgate_gateway::client::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_gets_every_message_in_order() {
    let server = start(|c| {
        c.feed_rate = Some(50_000);
        // Rings far longer than the pauses: no resync or gap is excused.
        c.channel_ring_chunks = 16_384;
        c.fanout.min_pass = Duration::from_micros(500);
        c.ws.socket_send_buffer_bytes = 4096;
        // No heartbeat or ping makes the task write on its own: after a hand-over only
        // the writer can carry the data on.
        c.ws.heartbeat_interval = Duration::from_secs(120);
        c.ws.ping_interval = Duration::from_secs(120);
    })
    .await;
    // The server's send buffer is what fills; the client's receive buffer stays sane: a
    // 4 KiB one made the kernel drop 64 KiB loopback segments and fall back on its persist
    // and retransmit timers (`ss`: Send-Q stuck, timer:(persist), drops at the receiver),
    // slowing the catch-up below to seconds.
    let mut ws = tickgate_gateway::client::connect_with(server.local_addr(), "/ws", Some(65_536))
        .await
        .expect("connects");
    assert_eq!(text(&mut ws).await["op"], "welcome");
    // Other books add volume so that the small socket buffers fill within a pause.
    let channels = json!(["book.BTC-USD", "trades.BTC-USD", "book.ETH-USD", "book.SOL-USD"]);
    let ack = request(&mut ws, json!({"op": "subscribe", "channels": channels})).await;
    let id = |n: usize| ack["channels"][n]["channel_id"].as_u64().unwrap() as u32;
    let mut f = Follower { book_channel: id(0), trades_channel: id(1), ..Follower::default() };
    let blocked_before = server.metrics().ws_blocked_total.load(Ordering::Relaxed);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(400);
        while tokio::time::Instant::now() < until {
            match next(&mut ws).await {
                // `apply` panics on any break in either sequence.
                Message::Binary(p) => f.apply(&p),
                Message::Close(code, reason) => panic!("closed: {code:?} {reason}"),
                Message::Text(_) => {}
            }
        }
    }
    let blocked = server.metrics().ws_blocked_total.load(Ordering::Relaxed) - blocked_before;
    // Still live after the last hand-over, whatever the machine's speed: the client
    // catches up with both channels' heads as they are now.
    let head = |name: &str| server.directory().get(name).expect("channel").last_seq();
    let (book_head, trades_head) = (head("book.BTC-USD"), head("trades.BTC-USD"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.book.as_ref().map_or(0, |b| b.seq().0) < book_head
        || f.last_trade_seq.unwrap_or(0) < trades_head
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "caught up with the heads in time: book {:?} of {book_head}, trades {:?} of \
             {trades_head}, {} hand-overs, writes {}",
            f.book.as_ref().map(|b| b.seq().0),
            f.last_trade_seq,
            server.metrics().ws_blocked_total.load(Ordering::Relaxed),
            server.metrics().ws_writes_total.load(Ordering::Relaxed),
        );
        if let Message::Binary(p) = next(&mut ws).await {
            f.apply(&p);
        }
    }
    eprintln!("{blocked} hand-overs, {} deltas, {} trades", f.deltas.len(), f.trades);
    assert!(blocked >= 1, "the socket filled during the pauses and the task took over");
    assert_eq!(f.resyncs, 0, "no resync: the ring covered every pause");
    assert!(f.gaps.is_empty(), "no gap notice");
    assert!(!f.deltas.is_empty() && f.trades > 0, "data came through");
    assert_eq!(server.metrics().ws_slow_closes_total.load(Ordering::Relaxed), 0);
    server.shutdown().await.expect("clean shutdown");
}
