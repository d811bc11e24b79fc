//! The comparison runs end to end against an in-process server with a live feed.

use std::time::Duration;

use tickgate_gateway::{Config, Server};
use tickgate_tools::compare::{self, CompareConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_every_method_against_a_live_market() {
    let server = Server::start(Config { feed_rate: Some(5_000), ..Config::for_tests() })
        .await
        .expect("server starts");
    let config = CompareConfig {
        addr: server.local_addr(),
        symbol: "BTC-USD".into(),
        updates: 5,
        poll_interval: Duration::from_millis(50),
        clients: 10,
        duration: Duration::from_millis(600),
        server_pid: Some(std::process::id()),
        user: ("alice".into(), "alice-demo-password".into()),
    };
    let result = compare::run(&config).await.expect("compare runs");
    let table = result.table(&config);
    let one: Vec<_> = result.one.iter().map(|(n, r)| (*n, r.clone())).collect();
    assert_eq!(one.len(), 3, "{table}");
    for (name, r) in &one {
        assert_eq!(r.updates, 5, "{name}: {table}");
        assert!(r.bytes > 0, "{name}: {table}");
    }
    let (poll, ws) = (&one[0].1, &one[1].1);
    // Polling cannot see 5 changes in fewer than 5 intervals; push is not bound by that.
    assert!(poll.requests >= 5 && poll.elapsed >= Duration::from_millis(200), "{table}");
    assert!(ws.elapsed < poll.elapsed, "{table}");
    assert!(poll.skipped > 0, "a market at 5,000 commands/s changes between polls: {table}");
    let (poll_many, ws_many) = (&result.many[0].1, &result.many[1].1);
    assert!(poll_many.requests_per_sec > 0.0 && ws_many.updates_per_sec > 0.0, "{table}");
    assert!(poll_many.server_cpu.is_some(), "{table}");
    server.shutdown().await.expect("clean stop");
}
