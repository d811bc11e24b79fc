//! Scale-out on real processes: a real `nats-server` (spawned here on a free port), one
//! engine node and two gateway nodes of the real binary, clients over real sockets.
//!
//! Without `nats-server` on the PATH the tests say so and pass, unless `CI` is set: then
//! they fail (CI installs it, see `.ci/run`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Api, Follower, Proc};
use serde_json::{json, Value};
use tickgate_gateway::client;

const BIN: &str = env!("CARGO_BIN_EXE_tickgate");
const SECRET: &str = "cluster-test-secret-of-32-bytes!";
const ADMIN: &str = "cluster-test-admin-token";
const WAIT: Duration = Duration::from_secs(30);

/// Reads `stream` to its end on a thread (so the child never blocks on a full pipe) and
/// returns the first address found after `marker`.
fn watch_for_addr(stream: impl std::io::Read + Send + 'static, marker: &'static str) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            // Shown with a failing test's output.
            eprintln!("{line}");
            if let Some(at) = line.find(marker) {
                let rest = &line[at + marker.len()..];
                let addr: String =
                    rest.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = rx.recv_timeout(WAIT).expect("the process reports its address");
    addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// `nats-server` on `port` (0: a free one). `None` when it is not installed and `CI` is
/// not set.
fn nats(port: u16) -> Option<Proc> {
    nats_with(port, None)
}

/// A temporary directory holding `nats.conf` with `config`, and `nats-server` on a free
/// port started with it.
fn nats_configured(name: &str, config: &str) -> Option<(TempDir, Proc)> {
    let dir = TempDir::new(name);
    std::fs::create_dir_all(&dir.0).expect("a temporary directory");
    let path = dir.0.join("nats.conf");
    std::fs::write(&path, config).expect("written");
    let nats = nats_with(0, Some(&path))?;
    Some((dir, nats))
}

/// Waits until the gateway at `addr` has applied some of the engine node's commands.
async fn until_following(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while health(addr).await["node"]["commands_applied"].as_u64().unwrap_or(0) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the gateway follows the engine node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `nats-server` on `port` with a configuration file.
fn nats_with(port: u16, config: Option<&Path>) -> Option<Proc> {
    let port = if port == 0 { "-1".to_string() } else { port.to_string() };
    let mut cmd = Command::new("nats-server");
    if let Some(config) = config {
        cmd.arg("-c").arg(config);
    }
    let spawned = cmd
        .args(["-a", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("nats-server is needed (apt-get install nats-server): {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: nats-server is not installed ({e}); CI runs this test");
            return None;
        }
    };
    let stderr = child.stderr.take().expect("piped stderr");
    let addr = watch_for_addr(stderr, "Listening for client connections on ");
    Some(Proc { child, addr })
}

fn node(nats: SocketAddr, role: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["--nats", &format!("nats://{nats}"), "--role", role])
        .args(["--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--admin-token", ADMIN])
        // One id for all the test's gateways: nodes must not rely on ids being unique.
        .args(["--rest-rate", "0", "--node-id", &format!("{role}-test")])
        .args(extra)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("the tickgate binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let addr = watch_for_addr(stdout, "listening on http://");
    Proc { child, addr }
}

fn engine(nats: SocketAddr, dir: &Path) -> Proc {
    let dir = dir.to_str().expect("a UTF-8 path");
    // Two shards: every shard has its own commands subject, sequences and replay.
    let args = ["--data-dir", dir, "--feed-rate", "1000", "--segment-mb", "1", "--shards", "2"];
    node(nats, "engine", &args)
}

fn gateway(nats: SocketAddr) -> Proc {
    node(nats, "gateway", &[])
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tickgate-cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, text) = common::http_raw(addr, &head).await;
    (status, common::body_json(&text))
}

/// A binary WebSocket client following `book.BTC-USD` and `trades.BTC-USD`.
struct Watcher {
    ws: client::Client,
    follower: Follower,
    /// The book's first snapshot.
    first: Option<tickgate_engine::BookSnapshot>,
}

impl Watcher {
    async fn open(addr: SocketAddr) -> Watcher {
        let mut ws = client::connect(addr, "/ws").await.expect("upgrade");
        let channels = ["book.BTC-USD", "trades.BTC-USD"];
        let sub = json!({"op": "subscribe", "id": 1, "channels": channels});
        client::send_json(&mut ws, &sub).await.expect("send");
        let mut follower = Follower::default();
        loop {
            let m = tokio::time::timeout(WAIT, client::next(&mut ws))
                .await
                .expect("in time")
                .expect("a message");
            match m {
                client::Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    if v["op"] == "subscribed" {
                        let ids = v["channels"].as_array().expect("channels");
                        follower.book_channel = ids[0]["channel_id"].as_u64().expect("id") as u32;
                        follower.trades_channel = ids[1]["channel_id"].as_u64().expect("id") as u32;
                        return Watcher { ws, follower, first: None };
                    }
                }
                client::Message::Binary(_) => panic!("data before the subscription's answer"),
                client::Message::Close(code, why) => panic!("closed: {code:?} {why}"),
            }
        }
    }

    /// Reads until the book is at sequence `seq` or later.
    async fn until_book(&mut self, seq: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.follower.book.as_ref().is_none_or(|b| b.seq().0 < seq) {
            let m = tokio::time::timeout_at(deadline, client::next(&mut self.ws))
                .await
                .expect("the book reaches the sequence in time")
                .expect("a message");
            if let client::Message::Binary(b) = m {
                self.follower.apply(&b);
                if self.first.is_none() {
                    self.first = self.follower.book.as_ref().map(|b| b.snapshot(usize::MAX));
                }
            }
        }
    }

    /// The top 20 levels of the book as it was at `seq` (its first snapshot, then the
    /// deltas up to `seq`).
    fn book_at(&self, seq: u64) -> Value {
        use std::collections::BTreeMap;
        assert_eq!(self.follower.resyncs, 0, "no resync");
        let first = self.first.as_ref().expect("a snapshot");
        assert!(first.seq.0 <= seq, "the stream began before {seq}");
        let mut sides: [BTreeMap<i64, i64>; 2] = Default::default();
        for (i, levels) in [&first.bids, &first.asks].into_iter().enumerate() {
            sides[i] = levels.iter().map(|(p, q)| (p.0, q.0)).collect();
        }
        let mut at = first.seq.0;
        for &(s, side, price, qty) in &self.follower.deltas {
            if s > seq {
                break;
            }
            at = s;
            let book = &mut sides[usize::from(side == tickgate_engine::Side::Sell)];
            if qty == 0 {
                book.remove(&price);
            } else {
                book.insert(price, qty);
            }
        }
        let bids: Vec<Value> = sides[0].iter().rev().take(20).map(|(p, q)| json!([p, q])).collect();
        let asks: Vec<Value> = sides[1].iter().take(20).map(|(p, q)| json!([p, q])).collect();
        json!({"seq": at, "bids": bids, "asks": asks})
    }
}

/// The REST book of `addr` with prices and quantities as integers (ticks and lots).
async fn rest_book(addr: SocketAddr) -> Value {
    let (status, b) = get(addr, "/api/v1/markets/BTC-USD/book?depth=20").await;
    assert_eq!(status, 200, "{b}");
    let units = |v: &Value| {
        let s = v.as_str().expect("a decimal");
        s.replace('.', "").parse::<i64>().expect("digits")
    };
    let side = |levels: &Value| {
        let levels = levels.as_array().expect("levels");
        levels.iter().map(|l| json!([units(&l[0]), units(&l[1])])).collect::<Vec<_>>()
    };
    json!({"seq": b["seq"], "bids": side(&b["bids"]), "asks": side(&b["asks"])})
}

/// Checks that the engine node's REST book, the gateways' REST books and the books
/// rebuilt from their WebSocket streams are one and the same at one sequence. The market
/// keeps moving: a gateway's REST book is taken until one has the engine's sequence.
async fn books_agree(engine: SocketAddr, gateways: &[SocketAddr], watchers: &mut [Watcher]) {
    for &g in gateways {
        let mut matched = false;
        for _ in 0..500 {
            let reference = rest_book(engine).await;
            let seq = reference["seq"].as_u64().expect("a sequence");
            let deadline = tokio::time::Instant::now() + WAIT;
            let book = loop {
                let book = rest_book(g).await;
                if book["seq"].as_u64().expect("a sequence") >= seq {
                    break book;
                }
                assert!(tokio::time::Instant::now() < deadline, "gateway {g} stays behind");
            };
            if book["seq"] == reference["seq"] {
                assert_eq!(book, reference, "gateway {g}'s REST book");
                matched = true;
                break;
            }
        }
        assert!(matched, "gateway {g} was never caught at the engine's sequence");
    }
    let reference = rest_book(engine).await;
    let seq = reference["seq"].as_u64().expect("a sequence");
    for w in watchers.iter_mut() {
        w.until_book(seq).await;
        assert_eq!(w.book_at(seq), reference, "a book rebuilt from a gateway's stream");
    }
}

/// The first execution report of `order` on an authenticated `orders` subscription.
async fn execution_of(ws: &mut client::Client, order: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, client::next(ws))
            .await
            .expect("the execution report arrives in time")
            .expect("a message");
        let client::Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).expect("JSON");
        if v["op"] == "execution" && v["order_id"] == order {
            return v;
        }
    }
}

/// Opens an SSE stream, says when it is open, then reads it until the text `want` comes
/// to hold (once it is not empty) appears, and `settle` longer; returns what it read.
async fn sse_until(
    addr: SocketAddr,
    token: String,
    open: tokio::sync::oneshot::Sender<()>,
    want: tokio::sync::watch::Receiver<String>,
    settle: Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET /api/v1/alerts/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let (mut text, mut buf, mut open) = (String::new(), [0u8; 4096], Some(open));
    let mut deadline = tokio::time::Instant::now() + WAIT;
    let mut found = false;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await;
        let n = match read {
            Ok(n) => n.expect("read"),
            Err(_) if found => return text,
            Err(_) => panic!("{:?} did not arrive: {text}", *want.borrow()),
        };
        assert!(n > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if text.contains("\r\n\r\n") {
            if let Some(open) = open.take() {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                let _ = open.send(());
            }
        }
        let wanted = want.borrow().clone();
        if !found && !wanted.is_empty() && text.contains(&wanted) {
            found = true;
            deadline = tokio::time::Instant::now() + settle;
        }
    }
}

/// An SSE stream on `addr` reading until what `want` names arrives; returns once open.
async fn open_sse(
    addr: SocketAddr,
    token: &str,
    want: &tokio::sync::watch::Receiver<String>,
    settle: Duration,
) -> tokio::task::JoinHandle<String> {
    let (open_tx, open_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(sse_until(addr, token.to_string(), open_tx, want.clone(), settle));
    open_rx.await.expect("the SSE stream opens");
    task
}

fn market_buy() -> Value {
    json!({"symbol": "BTC-USD", "side": "buy", "type": "market", "qty": "0.0010"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_node_and_two_gateways_serve_one_market_and_one_set_of_orders() {
    let Some(nats) = nats(0) else { return };
    let dir = TempDir::new("serve");
    let engine = engine(nats.addr, &dir.0);
    let (g1, g2) = (gateway(nats.addr), gateway(nats.addr));

    // The engine node serves no clients: no account, no alert stream (401 was the stream
    // asking for a token).
    for path in ["/api/v1/account", "/api/v1/alerts/stream"] {
        let (status, body) = get(engine.addr, path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, health) = get(g1.addr, "/healthz").await;
    assert_eq!((status, health["node"]["role"].as_str()), (200, Some("gateway")), "{health}");

    // Market data: books rebuilt on both gateways equal the engine's.
    let mut watchers = [Watcher::open(g1.addr).await, Watcher::open(g2.addr).await];
    books_agree(engine.addr, &[g1.addr, g2.addr], &mut watchers).await;
    // Trades: the same sequences with the same content on both (each keeps those since
    // it started).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut tapes = Vec::new();
    for g in [g1.addr, g2.addr] {
        let (status, t) = get(g, "/api/v1/markets/BTC-USD/trades?limit=50").await;
        assert_eq!(status, 200, "{t}");
        tapes.push(t["trades"].as_array().expect("trades").clone());
    }
    let shared: Vec<&Value> =
        tapes[0].iter().filter(|t| tapes[1].iter().any(|u| u["seq"] == t["seq"])).collect();
    assert!(shared.len() >= 10, "the tapes overlap: {tapes:?}");
    for t in shared {
        assert!(tapes[1].contains(t), "trade {t} is the same on both gateways");
    }

    // Orders: placed through gateway 2; reported on gateway 1's WebSocket and gateway 2's
    // SSE stream; the same on both gateways' REST.
    let alice = Api::login(g2.addr, 0).await;
    let mut ws = client::connect(g1.addr, "/ws?format=json").await.expect("upgrade");
    let auth = json!({"op": "auth", "id": 1, "token": alice.token});
    client::send_json(&mut ws, &auth).await.expect("send");
    let sub = json!({"op": "subscribe", "id": 2, "channels": ["orders"]});
    client::send_json(&mut ws, &sub).await.expect("send");
    // Subscribed before the order goes in: the channel is live from then on.
    loop {
        let m = tokio::time::timeout(WAIT, client::next(&mut ws)).await.expect("in time");
        if let Ok(client::Message::Text(t)) = m {
            let v: Value = serde_json::from_str(&t).expect("JSON");
            assert_ne!(v["op"], "error", "{v}");
            if v["op"] == "subscribed" {
                break;
            }
        }
    }
    let (want_tx, want_rx) = tokio::sync::watch::channel(String::new());
    let sse = open_sse(g2.addr, &alice.token, &want_rx, Duration::ZERO).await;
    let key = "Idempotency-Key: cluster-1\r\n";
    let (status, placed) = alice.call("POST", "/api/v1/orders", Some(market_buy()), key).await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(placed["status"], "filled", "{placed}");
    let id = placed["id"].as_u64().expect("an id");
    want_tx.send(format!("\"order_id\":{id},")).expect("the SSE reader waits");
    let exec = execution_of(&mut ws, id).await;
    assert_eq!(exec["channel"], "orders", "{exec}");
    let text = tokio::time::timeout(WAIT, sse).await.expect("in time").expect("the SSE task");
    let at = text.find(&format!("\"order_id\":{id},")).expect("the fill");
    assert!(text[..at].rfind("event: fill").is_some(), "{text}");
    for g in [g1.addr, g2.addr] {
        let api = Api { addr: g, token: alice.token.clone() };
        let (status, o) = api.call("GET", &format!("/api/v1/orders/{id}"), None, "").await;
        assert_eq!((status, &o["status"]), (200, &json!("filled")), "{o}");
        let (status, fills) = api.call("GET", "/api/v1/fills", None, "").await;
        assert_eq!(status, 200);
        let fills = fills["fills"].as_array().expect("fills").clone();
        assert!(fills.iter().any(|f| f["order_id"] == id), "{fills:?}");
        // A retry with the key through either node answers the first order.
        let (status, again) = api.call("POST", "/api/v1/orders", Some(market_buy()), key).await;
        assert_eq!((status, again["id"].as_u64()), (201, Some(id)), "{again}");
    }
    // ...from the gateway's own copy of the keys or its replica's table: no retry went on
    // to the engine, whose `duplicate_request` refusal would reach the owner's channel as
    // a report of an order that never existed. An order placed after them marks the end.
    no_duplicate_report_until_a_marker(&alice, &mut ws, "a retry reached the engine").await;
    let g1_alice = Api { addr: g1.addr, token: alice.token.clone() };
    let (_, a1) = g1_alice.call("GET", "/api/v1/account", None, "").await;
    let (_, a2) = alice.call("GET", "/api/v1/account", None, "").await;
    assert_eq!(a1["balances"], a2["balances"], "one account, seen alike");

    // Alerts: created through gateway 1, listed and deleted through gateway 2; one that
    // fires reaches the user's streams on both nodes, once each.
    let (want_tx, want_rx) = tokio::sync::watch::channel(String::new());
    let settle = Duration::from_millis(500);
    let streams = [
        open_sse(g1.addr, &alice.token, &want_rx, settle).await,
        open_sse(g2.addr, &alice.token, &want_rx, settle).await,
    ];
    let far = json!({"symbol": "BTC-USD", "condition": "above", "price": "1000000.00"});
    let (status, kept) = g1_alice.call("POST", "/api/v1/alerts", Some(far), "").await;
    assert_eq!(status, 201, "{kept}");
    let (status, listed) = alice.call("GET", "/api/v1/alerts", None, "").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["alerts"][0]["id"], kept["id"], "{listed}");
    let now = json!({"symbol": "BTC-USD", "condition": "above", "price": "1.00"});
    let (status, fired) = g1_alice.call("POST", "/api/v1/alerts", Some(now), "").await;
    assert_eq!(status, 201, "{fired}");
    let needle = format!("\"alert_id\":{},", fired["id"]);
    want_tx.send(needle.clone()).expect("the SSE readers wait");
    for stream in streams {
        let text = tokio::time::timeout(WAIT, stream).await.expect("in time").expect("SSE task");
        assert_eq!(text.matches(&needle).count(), 1, "once per stream: {text}");
        let at = text.find(&needle).expect("the alert");
        assert!(text[..at].rfind("event: price").is_some(), "{text}");
    }
    let path = format!("/api/v1/alerts/{}", kept["id"]);
    let (status, deleted) = alice.call("DELETE", &path, None, "").await;
    assert_eq!(status, 200, "{deleted}");
    let (_, listed) = g1_alice.call("GET", "/api/v1/alerts", None, "").await;
    assert_eq!(listed["alerts"], json!([]), "{listed}");

    // A gateway started later knows the orders and fills from before its start.
    let g3 = gateway(nats.addr);
    let g3_alice = Api { addr: g3.addr, token: alice.token.clone() };
    for path in ["/api/v1/fills", "/api/v1/orders?status=closed", "/api/v1/positions"] {
        let (status, later) = g3_alice.call("GET", path, None, "").await;
        let (_, earlier) = g1_alice.call("GET", path, None, "").await;
        assert_eq!(status, 200, "{later}");
        assert_eq!(later, earlier, "{path} on a gateway started later");
    }
    let (status, o) = g3_alice.call("GET", &format!("/api/v1/orders/{id}"), None, "").await;
    assert_eq!((status, &o["status"]), (200, &json!("filled")), "{o}");
    // And the trades and candles from before its start: the engine node's.
    let (_, tape) = get(g3.addr, "/api/v1/markets/BTC-USD/trades?limit=30").await;
    let (_, reference) = get(engine.addr, "/api/v1/markets/BTC-USD/trades?limit=1000").await;
    let tape = tape["trades"].as_array().expect("trades").clone();
    let reference = reference["trades"].as_array().expect("trades").clone();
    assert_eq!(tape.len(), 30, "a full tape at once: {tape:?}");
    for t in &tape {
        assert!(reference.contains(t), "trade {t} as the engine node has it");
    }
    let path = "/api/v1/markets/BTC-USD/candles?interval=1s&limit=10";
    let (_, late) = get(g3.addr, path).await;
    let (_, engine_candles) = get(engine.addr, path).await;
    let late = late["candles"].as_array().expect("candles").clone();
    let engine_candles = engine_candles["candles"].as_array().expect("candles").clone();
    assert!(late.len() >= 5, "{late:?}");
    // The oldest (closed) seconds are the same; the newest may still be moving.
    for c in &late[..late.len() - 2] {
        assert!(engine_candles.contains(c), "candle {c} as the engine node has it");
    }

    // Orders placed through one gateway, then the other, then the first again (ids from
    // two blocks): both nodes list them newest first, as the single process does.
    let mut placed = Vec::new();
    for (n, api) in [&g1_alice, &alice, &g1_alice, &alice].into_iter().enumerate() {
        let doge = json!({"symbol": "DOGE-USD", "side": "buy", "type": "limit", "price": "0.10000", "qty": "10", "client_order_id": 900 + n});
        let (status, order) = api.order(doge).await;
        assert_eq!(status, 201, "{order}");
        placed.push(order["id"].clone());
    }
    placed.reverse();
    for api in [&g1_alice, &alice] {
        let path = "/api/v1/orders?symbol=DOGE-USD&limit=4";
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, listed) = api.call("GET", path, None, "").await;
            assert_eq!(status, 200, "{listed}");
            let ids: Vec<Value> = listed["orders"]
                .as_array()
                .expect("orders")
                .iter()
                .map(|o| o["id"].clone())
                .collect();
            if ids == placed {
                break;
            }
            // The other node's replica trails by milliseconds.
            assert!(
                tokio::time::Instant::now() < deadline,
                "newest first: {ids:?}, not {placed:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, _) = api.call("DELETE", "/api/v1/orders?symbol=DOGE-USD", None, "").await;
        assert_eq!(status, 200);
    }

    // One idempotency key sent at once through two gateways for orders on two shards
    // (BTC-USD on shard 0, ETH-USD on shard 1): one order, the other request refused, and
    // retries through either gateway agree.
    for n in 0..6 {
        let key = format!("Idempotency-Key: race-{n}\r\n");
        let btc = json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1.00", "qty": "0.0010"});
        let eth = json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "1.00", "qty": "0.010"});
        let (a, b) = tokio::join!(
            g1_alice.call("POST", "/api/v1/orders", Some(btc.clone()), &key),
            alice.call("POST", "/api/v1/orders", Some(eth.clone()), &key),
        );
        let placed: Vec<_> = [&a, &b].into_iter().filter(|(status, _)| *status == 201).collect();
        assert_eq!(placed.len(), 1, "one order for key race-{n}: {a:?} {b:?}");
        let refused = if a.0 == 201 { &b } else { &a };
        assert_eq!(refused.0, 422, "{refused:?}");
        assert_eq!(refused.1["error"]["code"], "idempotency_key_reused", "{refused:?}");
        let (won, lost) = if a.0 == 201 { (&btc, &eth) } else { (&eth, &btc) };
        for api in [&g1_alice, &alice] {
            let (status, again) = api.call("POST", "/api/v1/orders", Some(won.clone()), &key).await;
            assert_eq!((status, &again["id"]), (201, &placed[0].1["id"]), "{again}");
            let (status, again) =
                api.call("POST", "/api/v1/orders", Some(lost.clone()), &key).await;
            assert_eq!(
                (status, again["error"]["code"].as_str()),
                (422, Some("idempotency_key_reused"))
            );
        }
    }

    // The same keyed order sent at once through both gateways: one order, both requests
    // answered with it (or told it is in flight, then answered), and no `rejected`
    // `duplicate_request` report on the owner's channel for the request that came second
    // (the engine node answers it with the first order instead of queueing it).
    let placed_with = |api: &Api, key: String| {
        let (api, key) = (Api { addr: api.addr, token: api.token.clone() }, key);
        async move {
            let doge = json!({"symbol": "DOGE-USD", "side": "buy", "type": "limit", "price": "0.10000", "qty": "10"});
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let (status, body) =
                    api.call("POST", "/api/v1/orders", Some(doge.clone()), &key).await;
                if status == 201 {
                    return body["id"].clone();
                }
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (409, Some("request_in_progress"))
                );
                assert!(tokio::time::Instant::now() < deadline, "{body}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    for n in 0..8 {
        let key = format!("Idempotency-Key: same-{n}\r\n");
        let (a, b) = tokio::join!(placed_with(&g1_alice, key.clone()), placed_with(&alice, key));
        assert_eq!(a, b, "one order for key same-{n}");
    }
    no_duplicate_report_until_a_marker(&alice, &mut ws, "the second request was queued").await;
    let (status, _) = alice.call("DELETE", "/api/v1/orders?symbol=DOGE-USD", None, "").await;
    assert_eq!(status, 200);

    // An order gateway 2 acknowledged is known at once to what acts on it through
    // gateway 1, whose replica trails by milliseconds: a cancel-all there covers it, a GET
    // and a cancel find it (they wait for gateway 1 to catch up with the engine node).
    for round in 0..40 {
        let doge = json!({"symbol": "DOGE-USD", "side": "buy", "type": "limit", "price": "0.10000", "qty": "10"});
        // Connected to gateway 1 beforehand: its request goes out the moment gateway 2's
        // answer is in (the race a client with two connections runs).
        let mut to_g1 = tokio::net::TcpStream::connect(g1.addr).await.expect("connect");
        let (status, placed) = alice.order(doge).await;
        assert_eq!(status, 201, "{placed}");
        let id = placed["id"].as_u64().expect("an id");
        let (method, path) = match round % 3 {
            0 => ("DELETE", "/api/v1/orders?symbol=DOGE-USD".to_string()),
            1 => ("GET", format!("/api/v1/orders/{id}")),
            _ => ("DELETE", format!("/api/v1/orders/{id}")),
        };
        let (status, body) = raw_call(&mut to_g1, method, &path, &g1_alice.token).await;
        assert_eq!(status, 200, "round {round}: {body}");
        if round % 3 == 0 {
            let canceled = body["canceled"].as_array().expect("canceled");
            assert!(canceled.iter().any(|o| o["id"].as_u64() == Some(id)), "round {round}: {body}");
        }
        if round % 3 == 1 {
            let (status, _) = g1_alice.call("DELETE", &path, None, "").await;
            assert_eq!(status, 200);
        }
    }

    // A logout of every session through gateway 3 ends them on every node; a new login
    // through it is good on the others.
    let (status, body) = g3_alice.call("POST", "/api/v1/auth/logout?all=true", None, "").await;
    assert_eq!(status, 200, "{body}");
    for api in [&g1_alice, &alice] {
        eventually_status(api, 401).await;
    }
    let again = Api::login(g3.addr, 0).await;
    for addr in [g1.addr, g2.addr] {
        eventually_status(&Api { addr, token: again.token.clone() }, 200).await;
    }
}

/// Places an order through `api` (the marker) and reads the owner's `orders` channel on
/// `ws` up to its report: no report before it may be a `duplicate_request` refusal (a
/// request for an order that never was, which reached the engine: `why`).
async fn no_duplicate_report_until_a_marker(api: &Api, ws: &mut client::Client, why: &str) {
    let (status, marker) = api.order(market_buy()).await;
    assert_eq!(status, 201, "{marker}");
    let marker = marker["id"].as_u64().expect("an id");
    loop {
        let m = tokio::time::timeout(WAIT, client::next(ws)).await.expect("in time");
        let Ok(client::Message::Text(t)) = m else { continue };
        let v: Value = serde_json::from_str(&t).expect("JSON");
        assert_ne!(v["reason"], "duplicate_request", "{why}: {v}");
        if v["op"] == "execution" && v["order_id"] == marker {
            break;
        }
    }
}

/// One request on an open connection: its status and JSON body.
async fn raw_call(
    stream: &mut tokio::net::TcpStream,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, Value) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n");
    let (status, response) = common::http_on(stream, &request).await;
    (status, common::body_json(&response))
}

/// Waits until `GET /api/v1/account` answers `status` for `api`.
async fn eventually_status(api: &Api, status: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (now, body) = api.call("GET", "/api/v1/account", None, "").await;
        if now == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now} {body}, not {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `addr` has repaired at least `n` gaps.
async fn wait_for_gaps(addr: SocketAddr, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while health(addr).await["node"]["gaps_repaired"].as_u64().is_none_or(|g| g < n) {
        assert!(tokio::time::Instant::now() < deadline, "gap {n} is seen and repaired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    common::http_raw(addr, &head).await
}

/// Health of a node as JSON.
async fn health(addr: SocketAddr) -> Value {
    let (status, h) = get(addr, "/healthz").await;
    // 503 while a gateway's market data is stale (NATS lost, or the engine node silent).
    let stale = h["node"]["role"] == "gateway"
        && (h["node"]["stale"] == true || h["node"]["nats_connected"] == false);
    if h["node"]["nats_connected"] == false {
        assert_eq!(h["node"]["stale"], true, "without NATS a gateway is stale: {h}");
    }
    if stale {
        assert_eq!((status, h["status"].as_str()), (503, Some("stale")), "{h}");
    } else {
        assert_eq!(status, 200, "{h}");
    }
    h
}

/// A logged-in user places an order through `addr` (a limit far from the market: it
/// rests, whatever the book holds) and cancels it: two round trips through the engine.
async fn trade_through(addr: SocketAddr) {
    let api = Api::login(addr, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let resting = json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1.00", "qty": "0.0010"});
    loop {
        let (status, placed) = api.order(resting.clone()).await;
        if status == 201 {
            assert_eq!(placed["status"], "open", "{placed}");
            let path = format!("/api/v1/orders/{}", placed["id"]);
            let (status, canceled) = api.call("DELETE", &path, None, "").await;
            assert_eq!((status, &canceled["status"]), (200, &json!("canceled")), "{canceled}");
            return;
        }
        // The engine node may still be starting: a clear, quick error meanwhile.
        assert_eq!(status, 503, "{placed}");
        assert!(tokio::time::Instant::now() < deadline, "{placed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_ride_out_a_gateway_kill_a_broker_restart_and_an_engine_restart() {
    // Messages of at most 16 KiB: snapshots travel in many pieces.
    let Some((dir, nats_proc)) = nats_configured("failover", "max_payload: 16384\n") else {
        return;
    };
    let config = dir.0.join("nats.conf");
    let nats_addr = nats_proc.addr;
    let mut engine_proc = engine(nats_addr, &dir.0);
    // Gateway 2 buffers few messages per subscription: a burst overflows it.
    let g1 = gateway(nats_addr);
    let g2 = node(nats_addr, "gateway", &["--nats-buffer", "64"]);

    // A gateway dies: its clients reconnect to the other and rebuild correct books.
    drop(g1);
    let mut watchers = [Watcher::open(g2.addr).await];
    books_agree(engine_proc.addr, &[g2.addr], &mut watchers).await;

    // The broker restarts mid-stream: what was published meanwhile is lost to the
    // gateway, which repairs the gap by replay; no restart, no resync for its clients.
    let user = Api::login(g2.addr, 0).await;
    let (want_tx, want_rx) = tokio::sync::watch::channel(String::new());
    let notices = open_sse(g2.addr, &user.token, &want_rx, Duration::ZERO).await;
    let mut ws = client::connect(g2.addr, "/ws?format=json").await.expect("upgrade");
    drop(nats_proc);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(health(g2.addr).await["status"], "stale", "a load balancer looks elsewhere");
    // An alert asked for meanwhile is refused at once, and not created once NATS is back
    // (it was held by the NATS client, answered 503 after 2 s, then created).
    let alert = json!({"symbol": "BTC-USD", "condition": "above", "price": "1000000.00"});
    let started = std::time::Instant::now();
    let (status, body) = user.call("POST", "/api/v1/alerts", Some(alert.clone()), "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("engine_unavailable")));
    assert!(started.elapsed() < Duration::from_secs(1), "at once: {:?}", started.elapsed());
    let nats_proc = nats_with(nats_addr.port(), Some(&config)).expect("nats-server restarts");
    want_tx.send("market_data_live".into()).expect("the SSE reader waits");
    let text = tokio::time::timeout(WAIT, notices).await.expect("in time").expect("SSE task");
    let stale = text.find("market_data_stale").expect("told the data is stale");
    assert!(stale < text.find("market_data_live").expect("then live"), "{text}");
    // WebSocket clients are told too.
    let mut states = Vec::new();
    while states.len() < 2 {
        let m = tokio::time::timeout(WAIT, client::next(&mut ws)).await.expect("in time");
        if let Ok(client::Message::Text(t)) = m {
            let v: Value = serde_json::from_str(&t).expect("JSON");
            if v["op"] == "market_data" {
                states.push(v["state"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert_eq!(states, ["stale", "live"]);
    // A connection opened after that is not told of a change from before it.
    let mut fresh = client::connect(g2.addr, "/ws?format=json").await.expect("upgrade");
    client::send_json(&mut fresh, &json!({"op": "ping", "id": "p"})).await.expect("send");
    loop {
        let m = tokio::time::timeout(WAIT, client::next(&mut fresh)).await.expect("in time");
        if let Ok(client::Message::Text(t)) = m {
            let v: Value = serde_json::from_str(&t).expect("JSON");
            assert_ne!(v["op"], "market_data", "{v}");
            if v["op"] == "pong" {
                break;
            }
        }
    }
    wait_for_gaps(g2.addr, 1).await;
    books_agree(engine_proc.addr, &[g2.addr], &mut watchers).await;
    trade_through(g2.addr).await;
    let (status, listed) = user.call("GET", "/api/v1/alerts", None, "").await;
    assert_eq!((status, &listed["alerts"]), (200, &json!([])), "{listed}");

    // The gateway falls behind (stopped for a moment, then flooded with what piled up):
    // NATS drops what its subscription cannot hold (a slow consumer); the gateway repairs
    // the gap and serves correct books, without a restart.
    let gaps = health(g2.addr).await["node"]["gaps_repaired"].as_u64().expect("a count");
    let pid = g2.child.id().to_string();
    freeze(&pid).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cont = Command::new("kill").args(["-CONT", &pid]).status().expect("kill -CONT");
    assert!(cont.success());
    wait_for_gaps(g2.addr, gaps + 1).await;
    let (_, metrics) = get_text(g2.addr, "/metrics").await;
    assert!(
        metrics.contains("tickgate_nats_disconnects_total{node=\"gateway-test\"} "),
        "{metrics}"
    );
    // What a gateway sends (its orders' and replays' requests) is counted too.
    let sent = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{node=\"gateway-test\"}} ")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert!(sent("tickgate_nats_messages_out_total").is_some_and(|n| n > 0), "{metrics}");
    assert!(sent("tickgate_nats_bytes_out_total").is_some_and(|n| n > 0), "{metrics}");
    books_agree(engine_proc.addr, &[g2.addr], &mut watchers).await;

    // The engine node freezes while a keyed order waits for it: the client is told to
    // retry with its key. Back, the engine node refuses the late request (past its
    // deadline), so the order never was: a retry through the same gateway places it,
    // once (it was answered `request_in_progress`, then `order_forgotten`, forever).
    let keyed = Api::login(g2.addr, 0).await;
    let far = json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1.00", "qty": "0.0010", "client_order_id": 4242});
    let key = "Idempotency-Key: frozen-engine\r\n";
    let engine_pid = engine_proc.child.id().to_string();
    freeze(&engine_pid).await;
    // An alert asked for meanwhile is answered 503 and dropped by the engine node once
    // back (its request came past its deadline).
    let ((status, body), (alert_status, alert_body)) = tokio::join!(
        keyed.call("POST", "/api/v1/orders", Some(far.clone()), key),
        keyed.call("POST", "/api/v1/alerts", Some(alert.clone()), ""),
    );
    let cont = Command::new("kill").args(["-CONT", &engine_pid]).status().expect("kill -CONT");
    assert!(cont.success());
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("engine_timeout")), "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let placed = loop {
        let (status, body) = keyed.call("POST", "/api/v1/orders", Some(far.clone()), key).await;
        if status == 201 {
            break body;
        }
        // The engine node may take a moment to answer again.
        assert!(status == 409 || status == 503, "{status} {body}");
        assert!(tokio::time::Instant::now() < deadline, "the retry places the order: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, again) = keyed.call("POST", "/api/v1/orders", Some(far.clone()), key).await;
    assert_eq!((status, &again["id"]), (201, &placed["id"]), "{again}");
    assert_eq!(alert_status, 503, "{alert_body}");
    let (status, listed) = keyed.call("GET", "/api/v1/alerts", None, "").await;
    assert_eq!((status, &listed["alerts"]), (200, &json!([])), "{listed}");
    let (status, open) = keyed.call("GET", "/api/v1/orders?status=open", None, "").await;
    assert_eq!(status, 200, "{open}");
    let open = open["orders"].as_array().expect("orders");
    let keyed_orders = open.iter().filter(|o| o["client_order_id"] == 4242).count();
    assert_eq!(keyed_orders, 1, "one order for the key: {open:?}");

    // Frozen for less than the gateway's wait: the request reaches the engine node past
    // its deadline and is refused there; the gateway, caught up with it, answers that the
    // order was not placed (it answered "may still take effect" seven seconds in).
    freeze(&engine_pid).await;
    let unkeyed = json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1.00", "qty": "0.0010", "client_order_id": 4343});
    let placing = tokio::spawn({
        let api = Api { addr: keyed.addr, token: keyed.token.clone() };
        async move { api.order(unkeyed).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let cont = Command::new("kill").args(["-CONT", &engine_pid]).status().expect("kill -CONT");
    assert!(cont.success());
    let (status, body) = placing.await.expect("the request task");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("engine_unavailable")),
        "{body}"
    );
    let (_, orders) = keyed.call("GET", "/api/v1/orders?symbol=BTC-USD", None, "").await;
    let orders = orders["orders"].as_array().expect("orders");
    assert!(orders.iter().all(|o| o["client_order_id"] != 4343), "not placed: {orders:?}");

    // The engine node restarts (SIGKILL, same data directory): the gateway follows its
    // new run, sequences continue, orders flow again.
    let applied = health(g2.addr).await["node"]["commands_applied"].as_u64().expect("a count");
    drop(engine_proc);
    // Meanwhile: order entry fails fast and clearly.
    let api = Api::login(g2.addr, 1).await;
    let started = std::time::Instant::now();
    let (status, body) = api.order(market_buy()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("engine_unavailable")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "no long timeout: {:?}", started.elapsed());
    engine_proc = engine(nats_addr, &dir.0);
    trade_through(g2.addr).await;
    books_agree(engine_proc.addr, &[g2.addr], &mut watchers).await;
    let after = health(g2.addr).await["node"]["commands_applied"].as_u64().expect("a count");
    assert!(after > applied, "the replica kept applying: {applied} then {after}");
    drop(nats_proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stops_rather_than_follow_an_engine_node_that_lost_its_history() {
    let Some(nats_proc) = nats(0) else { return };
    let memory_only = ["--durability", "off", "--feed-rate", "1000"];
    // A gateway started first waits for the engine node.
    let gateway_first = std::thread::spawn({
        let addr = nats_proc.addr;
        move || gateway(addr)
    });
    std::thread::sleep(Duration::from_millis(500));
    let engine_proc = node(nats_proc.addr, "engine", &memory_only);
    let mut g = gateway_first.join().expect("the gateway starts once the engine node is up");
    until_following(g.addr).await;
    // The engine node comes back empty: its history is not the one the replica followed.
    drop(engine_proc);
    let _engine_again = node(nats_proc.addr, "engine", &memory_only);
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = g.child.try_wait().expect("the gateway's status") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the gateway stops");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "it stops with an error: {status:?}");
}

/// NATS credentials pass through: with the broker's token an engine node and a gateway
/// work together; a gateway with a wrong token stops at once with the broker's refusal in
/// its error (a wrong credential is not a network blip to retry forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_use_the_brokers_token_and_a_wrong_one_stops_at_once() {
    let config = "authorization { token: \"broker-token-1\" }\n";
    let Some((_dir, nats_proc)) = nats_configured("token", config) else { return };
    let engine_args =
        ["--durability", "off", "--feed-rate", "1000", "--nats-token", "broker-token-1"];
    let _engine = node(nats_proc.addr, "engine", &engine_args);
    let g = node(nats_proc.addr, "gateway", &["--nats-token", "broker-token-1"]);
    until_following(g.addr).await;

    let stderr = refused(nats_proc.addr, &["--nats-token", "not-it"]);
    assert!(stderr.to_lowercase().contains("authorization"), "the refusal is named: {stderr}");

    // A gateway given another token secret than the engine node's stops with why (its
    // clients' tokens would be refused by every other node).
    let stderr = refused_with(
        nats_proc.addr,
        "another-secret-also-of-32-bytes!",
        &["--nats-token", "broker-token-1"],
    );
    assert!(stderr.contains("token secret"), "the refusal is named: {stderr}");
}

/// Starts a gateway node with `extra` that NATS must refuse, waits for it to stop with an
/// error (a wrong credential or certificate is not a network blip to retry forever) and
/// returns what it wrote to stderr.
fn refused(nats: SocketAddr, extra: &[&str]) -> String {
    refused_with(nats, SECRET, extra)
}

/// [`refused`], the gateway given the token secret `secret`.
fn refused_with(nats: SocketAddr, secret: &str, extra: &[&str]) -> String {
    let mut node = Command::new(BIN)
        .args(["--nats", &format!("nats://{nats}"), "--role", "gateway"])
        .args(["--listen", "127.0.0.1:0", "--jwt-secret", secret])
        .args(extra)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tickgate binary starts");
    let status = common::exits_within(&mut node, WAIT)
        .unwrap_or_else(|| panic!("a node NATS refuses kept running ({extra:?})"));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut node.stderr.take().expect("piped"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{status:?}: {stderr}");
    stderr
}

/// TLS to the broker: `nats-server` with a certificate for 127.0.0.1, nodes given that
/// certificate's issuer with `--nats-ca` work together over TLS (the gateway follows the
/// engine node and serves its book); a gateway trusting another CA stops at once and
/// names the certificate it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_a_tls_broker_through_its_ca_and_refuse_a_certificate_it_did_not_sign() {
    let dir = TempDir::new("tls");
    std::fs::create_dir_all(&dir.0).expect("a temporary directory");
    let write = |name: &str, text: String| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).expect("written");
        path.to_str().expect("a UTF-8 path").to_string()
    };
    let broker = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a certificate");
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("another");
    let cert = write("broker.crt", broker.cert.pem());
    let key = write("broker.key", broker.key_pair.serialize_pem());
    let other_ca = write("other.crt", other.cert.pem());
    let config = format!("tls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n}}\n");
    let conf = write("nats.conf", config);
    let Some(nats_proc) = nats_with(0, Some(Path::new(&conf))) else { return };

    let engine_args = ["--durability", "off", "--feed-rate", "1000", "--nats-ca", &cert];
    let _engine = node(nats_proc.addr, "engine", &engine_args);
    let g = node(nats_proc.addr, "gateway", &["--nats-ca", &cert]);
    until_following(g.addr).await;
    assert_eq!(health(g.addr).await["node"]["nats_connected"], json!(true));
    let book = rest_book(g.addr).await;
    let served = book["seq"].as_u64().unwrap_or(0) > 0
        && book["bids"].as_array().is_some_and(|b| !b.is_empty());
    assert!(served, "the gateway serves the engine node's book: {book}");

    let stderr = refused(nats_proc.addr, &["--nats-ca", &other_ca]);
    assert!(stderr.contains("invalid peer certificate"), "the refusal is named: {stderr}");
}

/// A NATS JWT (`ed25519-nkey`) with `claims` about `subject`, issued and signed by
/// `issuer`: what `nsc` writes, made here so the test needs nothing but `nats-server`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({
        "jti": format!("TICKGATE{issued}{}", &subject[..8]),
        "iat": issued,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let head = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64(claims.to_string().as_bytes());
    let signed = format!("{head}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("signed");
    format!("{signed}.{}", b64(&signature))
}

/// NATS credentials files pass through: `nats-server` in operator mode (an operator, one
/// account preloaded, JWTs made here), nodes given a user's credentials file with
/// `--nats-creds` work together; a user signed by an account the broker does not know
/// stops at once with the refusal named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_log_in_with_a_credentials_file_and_an_unknown_account_stops_at_once() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let stranger = nkeys::KeyPair::new_account();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "tickgate-test",
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1});
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "trading",
        json!({"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}},
            "type": "account", "version": 2}),
    );
    let creds = |signer: &nkeys::KeyPair| {
        let user = nkeys::KeyPair::new_user();
        let user_jwt = nats_jwt(
            signer,
            &user.public_key(),
            "node",
            json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2}),
        );
        let seed = user.seed().expect("a seed");
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    };
    let config = format!(
        "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n}}\n",
        account.public_key()
    );
    let Some((dir, nats_proc)) = nats_configured("creds", &config) else { return };
    let write = |name: &str, text: String| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).expect("written");
        path.to_str().expect("a UTF-8 path").to_string()
    };
    let node_creds = write("node.creds", creds(&account));
    let stranger_creds = write("stranger.creds", creds(&stranger));

    let engine_args = ["--durability", "off", "--feed-rate", "1000", "--nats-creds", &node_creds];
    let _engine = node(nats_proc.addr, "engine", &engine_args);
    let g = node(nats_proc.addr, "gateway", &["--nats-creds", &node_creds]);
    until_following(g.addr).await;

    let stderr = refused(nats_proc.addr, &["--nats-creds", &stranger_creds]);
    assert!(stderr.to_lowercase().contains("authorization"), "the refusal is named: {stderr}");
}

/// Stops process `pid` (`SIGSTOP`) and waits until every one of its threads shows stopped,
/// so that what the test sends next finds it frozen. (CI, 2026-12-08: an alert sent right
/// after `kill` returned was created, where a 503 was expected; whether the stop's
/// delivery was late is not known.)
async fn freeze(pid: &str) {
    let stop = Command::new("kill").args(["-STOP", pid]).status().expect("kill -STOP");
    assert!(stop.success());
    let stopped = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
        tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            let state =
                stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('T' | 't') | None)
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !stopped() {
        assert!(tokio::time::Instant::now() < deadline, "process {pid} did not stop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
