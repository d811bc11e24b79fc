//! Replaying a recorded journal into a fresh server: the same commands in the same order
//! give the recorded state exactly (checked against an independent replay of the files).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tickgate_engine::durable::{self, DurabilityConfig};
use tickgate_gateway::server::engine_spec;

/// The replaying server's state digest once its replay has submitted and applied all
/// `commands` (bounded: a replay that never ends fails the test).
async fn replayed_state(replaying: &tickgate_gateway::Server, commands: u64) -> u64 {
    let stats = std::sync::Arc::clone(replaying.replay().expect("replay running").stats());
    let engine = replaying.engine().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = stats.done.load(std::sync::atomic::Ordering::Acquire);
        let digest = engine.digest(0).expect("running");
        if done && digest.counters.commands == commands {
            return digest.state;
        }
        assert!(tokio::time::Instant::now() < deadline, "replay did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_journal_reaches_the_recorded_state() {
    let dir = std::env::temp_dir().join(format!("tickgate-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Record: the synthetic feed plus a user's orders, journaled.
    let mut recording = start(|c| {
        c.durability = Some(DurabilityConfig::new(&dir));
        c.feed_rate = Some(5_000);
    })
    .await;
    let alice = Api::login(recording.local_addr(), 0).await;
    for price in ["64000.00", "64100.00", "64200.00"] {
        let order = json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": price, "qty": "0.0100"});
        assert_eq!(alice.order(order).await.0, 201);
    }
    // A keyed order: its key is remembered with its command's stamp, which the replay
    // must give it again to reach the same state.
    let keyed = json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "2000.00", "qty": "0.100"});
    let (status, _) =
        alice.call("POST", "/api/v1/orders", Some(keyed), "Idempotency-Key: replay-1\r\n").await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(700)).await;
    recording.stop_feed();
    let recorded = recording.engine().digest(0).expect("running");
    recording.shutdown().await.expect("clean stop");
    let verified = durable::verify(&dir, &engine_spec(), 1).expect("journal verifies");
    assert_eq!(verified.shards[0].state_digest, recorded.state);
    assert!(recorded.journal_seq > 1_000, "a lively recording: {}", recorded.journal_seq);

    // Replay at full speed into a server without a journal of its own. With this server's
    // clock's stamps the keys' times differ: the state does too (a control: the digest
    // sees them).
    let replaying = start(|c| {
        c.replay = Some((dir.clone(), None));
        c.replay_stamps = tickgate_feed::ReplayStamps::Clock;
    })
    .await;
    let state = replayed_state(&replaying, recorded.journal_seq).await;
    assert_ne!(state, recorded.state, "the keys' times are this server's");
    replaying.shutdown().await.expect("clean stop");

    // With the recording's stamps (the default): the recorded state.
    let replaying = start(|c| c.replay = Some((dir.clone(), None))).await;
    let stats = replaying.replay().expect("replay running").stats();
    assert_eq!(stats.total.load(std::sync::atomic::Ordering::Relaxed), recorded.journal_seq);
    let state = replayed_state(&replaying, recorded.journal_seq).await;
    assert_eq!(state, recorded.state, "the replay reaches the recorded state");
    // New orders get ids above every replayed one.
    let alice = Api::login(replaying.local_addr(), 0).await;
    let (status, placed) = alice
        .order(json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "3000.00", "qty": "0.100"}))
        .await;
    assert_eq!(status, 201, "{placed}");
    replaying.shutdown().await.expect("clean stop");

    // A recording of several shards is refused, not replayed as its shard 0 alone.
    std::fs::write(dir.join(durable::SHARDS_FILE), "2\n").expect("write");
    let refused = tickgate_gateway::Server::start({
        let mut c = tickgate_gateway::Config::for_tests();
        c.replay = Some((dir.clone(), None));
        c
    })
    .await
    .map(|_| ())
    .expect_err("a two-shard recording");
    assert!(refused.to_string().contains("a recording of 2 shards"), "{refused:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
