//! The load probe's checks against a real stream: a capture of an in-process server,
//! served back by the replayer, intact, with one delta corrupted, and with one frame
//! dropped. The rebuilt book must match the server's REST book exactly when intact, and
//! the probe must catch the corruption and the gap.

use std::sync::Arc;
use std::time::Duration;

use tickgate_gateway::protocol::{self, MsgType};
use tickgate_gateway::{Config, Server};
use tickgate_tools::capture::{self, Capture, CaptureWriter, RecordConfig, KIND_BINARY};
use tickgate_tools::load::{self, LoadConfig, Pattern, Report};

/// Serves `capture` and runs the probe against it, with the REST book from `rest`.
async fn probe(capture: Capture, rest: std::net::SocketAddr) -> Report {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let replayer = tokio::spawn(capture::serve(listener, Arc::new(capture), None));
    let config = LoadConfig {
        addr,
        connections: 1,
        kinds: vec!["book".into(), "trades".into()],
        pattern: Pattern::Hot("BTC-USD".into()),
        symbols: vec!["BTC-USD".into()],
        json: false,
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        idle: false,
        verify: true,
        rest_addr: Some(rest),
        tls: None,
        stalled: 0,
        stall_after: Duration::ZERO,
    };
    let report = load::run(config).await.expect("probe runs");
    replayer.abort();
    report
}

/// (frame index, byte offset of the qty) of the last book delta in the capture.
fn last_delta(c: &Capture) -> (usize, usize) {
    let mut found = None;
    for (i, f) in c.frames.iter().enumerate().filter(|(_, f)| f.kind == KIND_BINARY) {
        for msg in protocol::decode(&f.payload).map_while(Result::ok) {
            if msg.msg_type == MsgType::BookDelta {
                let body = msg.body.as_ptr() as usize - f.payload.as_ptr() as usize;
                found = Some((i, body + 16));
            }
        }
    }
    found.expect("the capture has book deltas")
}

fn rewrite(c: &Capture, path: &std::path::Path) -> Capture {
    let file = std::fs::File::create(path).expect("create");
    let mut w = CaptureWriter::new(file, &c.header).expect("header");
    for f in &c.frames {
        w.frame(f).expect("frame");
    }
    w.finish().expect("flush");
    capture::read(path).expect("reads back")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_verifies_books_and_catches_corruption_and_gaps() {
    let mut server = Server::start(Config { feed_rate: Some(5_000), ..Config::for_tests() })
        .await
        .expect("server starts");
    let rest = server.local_addr();
    let dir = std::env::temp_dir().join(format!("tickgate-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("btc.tgc");
    let config = RecordConfig {
        addr: rest,
        channels: vec!["book.BTC-USD".into(), "trades.BTC-USD".into()],
        duration: Duration::from_millis(1_500),
        frames_max: 0,
        progress: false,
    };
    let recorder = {
        let path = path.clone();
        tokio::spawn(async move { capture::record(&config, &path).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The market goes quiet, so the REST book stays at the capture's last sequence.
    server.stop_feed();
    recorder.await.expect("task").expect("records");
    let original = capture::read(&path).expect("capture");
    assert!(original.frames.len() > 20, "{} frames", original.frames.len());

    let intact = probe(capture::read(&path).expect("capture"), rest).await;
    assert_eq!(intact.books.verified, 1, "{}", intact.table());
    assert_eq!((intact.books.mismatched, intact.seq_breaks), (0, 0), "{}", intact.table());

    // One delta's quantity changed: the rebuilt book no longer matches.
    let mut corrupted = capture::read(&path).expect("capture");
    let (frame, qty_at) = last_delta(&corrupted);
    let payload = &mut corrupted.frames[frame].payload;
    let qty = i64::from_le_bytes(payload[qty_at..qty_at + 8].try_into().expect("8 bytes"));
    payload[qty_at..qty_at + 8].copy_from_slice(&(qty + 1).to_le_bytes());
    let corrupted = rewrite(&corrupted, &dir.join("corrupted.tgc"));
    let report = probe(corrupted, rest).await;
    assert_eq!(report.books.mismatched, 1, "{}", report.table());

    // A frame with book deltas lost on the way: a sequence break, and no book to trust.
    let mut gapped = capture::read(&path).expect("capture");
    let (frame, _) = last_delta(&gapped);
    let earlier = (0..frame)
        .rev()
        .find(|&i| {
            gapped.frames[i].kind == KIND_BINARY
                && protocol::decode(&gapped.frames[i].payload)
                    .map_while(Result::ok)
                    .any(|m| m.msg_type == MsgType::BookDelta)
        })
        .expect("an earlier frame with deltas");
    gapped.frames.remove(earlier);
    let gapped = rewrite(&gapped, &dir.join("gapped.tgc"));
    let report = probe(gapped, rest).await;
    assert!(report.seq_breaks >= 1, "{}", report.table());
    assert_eq!(report.books.verified, 0, "{}", report.table());

    server.shutdown().await.expect("clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_counts_what_the_server_says_it_sent() {
    counts_what_the_server_sent(false, false).await;
}

/// In JSON mode too: one message per message object (a snapshot's trades are not
/// messages), sequences checked per channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_counts_what_the_server_says_it_sent_in_json() {
    counts_what_the_server_sent(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_counts_what_the_server_says_it_sent_over_wss() {
    counts_what_the_server_sent(true, false).await;
}

async fn counts_what_the_server_sent(tls: bool, json: bool) {
    let dir = std::env::temp_dir()
        .join(format!("tickgate-probe-tls-{}-{tls}-{json}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(&cert, made.cert.pem()).expect("write");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("write");
    let mut server = Server::start(Config {
        feed_rate: Some(5_000),
        tls: tls.then(|| (cert.clone(), key)),
        ..Config::for_tests()
    })
    .await
    .expect("server starts");
    let config = LoadConfig {
        addr: server.local_addr(),
        connections: 4,
        kinds: vec!["book".into(), "trades".into(), "bbo".into()],
        pattern: Pattern::All,
        symbols: server.engine().instruments().iter().map(|i| i.spec.symbol.clone()).collect(),
        json,
        duration: Duration::from_millis(2_500),
        warmup: Duration::ZERO,
        idle: false,
        verify: false,
        rest_addr: None,
        stalled: 0,
        stall_after: Duration::ZERO,
        tls: tls.then(|| load::Wss {
            connector: load::tls_connector(&cert).expect("connector"),
            name: "localhost".into(),
        }),
    };
    let probe = tokio::spawn(load::run(config));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Quiet before the probe stops reading, so everything sent has been read.
    server.stop_feed();
    let report = probe.await.expect("task").expect("probe runs");
    let sent = server.metrics().ws_messages_sent_total.load(std::sync::atomic::Ordering::Relaxed);
    let received = report.messages + report.snapshots + report.gaps;
    assert!(report.messages > 1_000, "{}", report.table());
    assert_eq!(received, sent, "probe and server disagree: {}", report.table());
    assert_eq!((report.seq_breaks, report.connections), (0, 4), "{}", report.table());
    let handshakes =
        server.metrics().tls_handshakes_total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(handshakes, if tls { 4 } else { 0 });
    server.shutdown().await.expect("clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_held_and_left_out_of_the_report() {
    let mut server = Server::start(Config { feed_rate: Some(5_000), ..Config::for_tests() })
        .await
        .expect("server starts");
    let config = LoadConfig {
        addr: server.local_addr(),
        connections: 3,
        kinds: vec!["book".into(), "trades".into()],
        pattern: Pattern::All,
        symbols: server.engine().instruments().iter().map(|i| i.spec.symbol.clone()).collect(),
        json: false,
        duration: Duration::from_millis(2_000),
        warmup: Duration::from_millis(500),
        idle: false,
        verify: false,
        rest_addr: None,
        tls: None,
        stalled: 5,
        stall_after: Duration::from_millis(300),
    };
    let report = load::run(config).await.expect("probe runs");
    assert_eq!((report.connections, report.stalled), (3, 5), "{}", report.table());
    assert_eq!(report.seq_breaks, 0, "{}", report.table());
    assert!(report.messages > 1_000, "the healthy ones read on: {}", report.table());
    // The stalled ones measured nothing: counted, the fewest per connection would be 0.
    assert!(report.per_connection.min > 100, "{}", report.table());
    server.stop_feed();
    server.shutdown().await.expect("clean stop");
}
