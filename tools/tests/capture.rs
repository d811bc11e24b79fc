//! Record a live server's market data into a capture, serve the capture back with the
//! replayer, record the replay: the second capture holds exactly the frames of the first.

use std::sync::Arc;
use std::time::Duration;

use tickgate_gateway::{Config, Server};
use tickgate_tools::capture::{self, RecordConfig, KIND_BINARY, KIND_TEXT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_gives_back_the_same_stream() {
    let server = Server::start(Config { feed_rate: Some(5_000), ..Config::for_tests() })
        .await
        .expect("server starts");
    let dir = std::env::temp_dir().join(format!("tickgate-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (first, second) = (dir.join("live.tgc"), dir.join("replayed.tgc"));
    let config = RecordConfig {
        addr: server.local_addr(),
        channels: vec!["book.BTC-USD".into(), "trades.BTC-USD".into()],
        duration: Duration::from_secs(20),
        frames_max: 200,
        progress: false,
    };
    let recorded = capture::record(&config, &first).await.expect("records");
    assert_eq!(recorded, 200);
    let live = capture::read(&first).expect("reads back");
    assert_eq!(live.frames.len(), 200);
    assert_eq!(live.torn_bytes, 0);
    assert_eq!(live.header["channels"][0], "book.BTC-USD");
    assert!(live.header["instruments"].as_array().is_some_and(|i| i.len() == 8), "{}", live.header);
    assert!(live.frames.iter().any(|f| f.kind == KIND_TEXT), "the welcome and subscribe replies");
    assert!(live.frames.iter().filter(|f| f.kind == KIND_BINARY).count() > 100);
    assert!(live.frames.windows(2).all(|w| w[0].received_ns <= w[1].received_ns));
    let refused = RecordConfig { channels: vec!["book.NOPE-USD".into()], ..config.clone() };
    let nope = dir.join("nope.tgc");
    let e = capture::record(&refused, &nope).await.expect_err("refused").to_string();
    assert!(e.contains("refused the subscription: unknown_symbol"), "{e}");
    assert!(!nope.exists() && !dir.join("nope.tgc.partial").exists());
    server.shutdown().await.expect("clean stop");

    // Serve it back at full speed and record what a client receives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(capture::ReplayStats::default());
    let replayer =
        tokio::spawn(capture::serve_counted(listener, Arc::new(live), None, Arc::clone(&stats)));
    let again = RecordConfig { addr, duration: Duration::from_secs(20), ..config.clone() };
    let n = capture::record(&again, &second).await.expect("records the replay");
    // The replayer's counters (its progress bar and summary) saw the same.
    let mut finished = Vec::new();
    for _ in 0..300 {
        finished.extend(stats.take_finished());
        if !finished.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    replayer.abort();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!((stats.clients.load(Relaxed), stats.frames.load(Relaxed)), (1, 200));
    assert_eq!(stats.furthest.load(Relaxed), 200);
    assert!(finished.len() == 1 && finished[0].contains("200 frames"), "{finished:?}");
    let (a, b) = (capture::read(&first).expect("first"), capture::read(&second).expect("second"));
    assert_eq!(n, 200);
    let frames = |c: &capture::Capture| {
        c.frames.iter().map(|f| (f.kind, f.payload.clone())).collect::<Vec<_>>()
    };
    assert_eq!(frames(&a), frames(&b), "the replayed stream equals the recorded one");
    assert_eq!(b.header["instruments"], a.header["instruments"], "the replayer serves them");

    // A damaged frame is refused, a cut one is reported as torn.
    let mut bytes = std::fs::read(&first).expect("bytes");
    let n = bytes.len();
    std::fs::write(&second, &bytes[..n - 3]).expect("write");
    let cut = capture::read(&second).expect("a torn tail is not an error");
    assert_eq!((cut.frames.len(), cut.torn_bytes > 0), (199, true));
    bytes[n - 1] ^= 0xff;
    std::fs::write(&second, &bytes).expect("write");
    assert!(capture::read(&second).is_err());
    bytes[n - 1] ^= 0xff;

    // Damage in the middle is an error naming the frame's offset, never a capture cut
    // short there or one that replays for ever: a huge length, a time years ahead, a kind
    // that does not exist (neither is under the checksum).
    let at = frame_offset(&bytes, 100);
    for (field, byte, what) in
        [(3, 0x7f, "a length of"), (4 + 7, 0x7f, "received at"), (12, 9, "unknown kind 9")]
    {
        let mut damaged = bytes.clone();
        damaged[at + field] = byte;
        std::fs::write(&second, &damaged).expect("write");
        let e = capture::read(&second).expect_err("refused").to_string();
        assert!(e.contains(what) && e.contains(&format!("offset {at}")), "{e}");
    }

    // A recorder that cannot record leaves an existing capture as it was.
    std::fs::write(&second, &bytes).expect("write");
    let gone = RecordConfig { addr: "127.0.0.1:1".parse().expect("addr"), ..config.clone() };
    assert!(capture::record(&gone, &second).await.is_err());
    assert_eq!(std::fs::read(&second).expect("still there"), bytes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The offset of frame `n` in a capture's bytes.
fn frame_offset(bytes: &[u8], n: usize) -> usize {
    let u32_at =
        |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    let mut at = 16 + u32_at(12);
    for _ in 0..n {
        at += 17 + u32_at(at);
    }
    at
}
