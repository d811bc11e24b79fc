//! Crash test on the real binary: place orders from several REST and WebSocket clients while the synthetic
//! feed runs, SIGKILL the process at a random moment, restart it on the same data
//! directory, and check that every acknowledged order is there in a state consistent with
//! its acknowledgement, and that the live state digest equals a from-scratch replay of the
//! journal in which no money was created or lost. Several rounds, each with its own kill
//! point, on one growing journal.
//!
//! Every order carries an idempotency key and a unique `client_order_id`. After each
//! restart, every keyed request ever sent (acknowledged, or in flight at the kill) is
//! retried twice with its key: an acknowledged one answers its original order, and no
//! `client_order_id` is ever held by two orders (no retry executed twice).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_tickgate");

fn spawn(dir: &Path, feed: bool, snapshot_every: u64) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(["--durability", "fsync", "--feed-rate", "3000", "--segment-mb", "1"])
        // The check after each restart reads every order acknowledged so far, thousands
        // of requests a second from one user.
        .args(["--rest-rate", "0"])
        .args(["--snapshot-every", &snapshot_every.to_string()])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !feed {
        cmd.arg("--no-feed");
    }
    let mut child = cmd.spawn().expect("the tickgate binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on http://".len()..];
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let mut proc = Proc { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the server reports its address");
    proc.addr = addr.parse().expect("an address");
    proc
}

/// A tiny xorshift, seeded per run and printed, so a failing kill point can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Debug, Clone)]
struct Acked {
    user: usize,
    id: u64,
    status: String,
    via: &'static str,
}

/// A keyed order request as sent, and what answered it (`None`: in flight at the kill).
#[derive(Debug, Clone)]
struct Keyed {
    user: usize,
    key: String,
    body: Value,
    /// HTTP status, and the order id (201) or the error code (otherwise).
    answer: Option<(u16, Value)>,
}

/// What a trader did: acknowledged orders, and every keyed request.
#[derive(Default)]
struct Traded {
    acked: Vec<Acked>,
    keyed: Vec<Keyed>,
}

/// A `client_order_id` unique per trader (the seed's bits 32 to 47 differ between the
/// traders of a round, its low bits between rounds) and request.
fn client_order_id(seed: u64, n: u64) -> u64 {
    ((seed >> 32) & 0xffff) << 40 | (seed & 0xff) << 32 | n
}

/// The id or error code that identifies an order answer.
fn answer_of(status: u16, v: &Value) -> (u16, Value) {
    match status {
        201 => (status, v["id"].clone()),
        _ => (status, v["error"]["code"].clone()),
    }
}

/// Places orders until the server goes away; returns what was acknowledged.
async fn trader(addr: SocketAddr, user: usize, seed: u64, stop: Arc<AtomicBool>) -> Traded {
    let Some(api) = try_login(addr, user).await else { return Traded::default() };
    let mut rng = Rng(seed | 1);
    let mut traded = Traded::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let r = rng.next();
        n += 1;
        let side = if r.is_multiple_of(2) { "buy" } else { "sell" };
        let price = format!("{}.{:02}", 3490 + (r >> 8) % 20, (r >> 16) % 100);
        let qty = format!("0.{:03}", 10 + (r >> 24) % 90);
        let kind = ["limit", "limit", "ioc", "post_only"][((r >> 32) % 4) as usize];
        // Unique per trader and request: no two requests ever mean the same order.
        let client_order_id = client_order_id(seed, n);
        let body = json!({"symbol": "ETH-USD", "side": side, "type": kind, "price": price, "qty": qty, "client_order_id": client_order_id});
        let key = format!("rest-{seed:x}-{n}");
        let mut keyed = Keyed { user, key: key.clone(), body: body.clone(), answer: None };
        let sent = try_call_keyed(&api, "POST", "/api/v1/orders", Some(body), Some(&key)).await;
        let Some((status, v)) = sent else {
            traded.keyed.push(keyed);
            break; // killed
        };
        keyed.answer = Some(answer_of(status, &v));
        traded.keyed.push(keyed);
        let acked = &mut traded.acked;
        if status == 201 || status == 422 {
            if let (Some(id), Some(s)) = (v["id"].as_u64(), v["status"].as_str()) {
                acked.push(Acked { user, id, status: s.to_string(), via: "rest" });
            }
        }
        if (r >> 40).is_multiple_of(5) {
            if let Some(last) = acked.iter().rev().find(|a| a.status == "open") {
                let path = format!("/api/v1/orders/{}", last.id);
                if try_call(&api, "DELETE", &path, None).await.is_none() {
                    break;
                }
            }
        }
    }
    traded
}

/// Places orders over an authenticated WebSocket until the server goes away.
async fn ws_trader(addr: SocketAddr, user: usize, seed: u64, stop: Arc<AtomicBool>) -> Traded {
    use tickgate_gateway::client::{self, Message};
    let Some(api) = try_login(addr, user).await else { return Traded::default() };
    let mut traded = Traded::default();
    let Ok(mut ws) = client::connect(addr, &format!("/ws?token={}", api.token)).await else {
        return traded;
    };
    let mut rng = Rng(seed | 1);
    let mut request_id = 0u64;
    'orders: while !stop.load(Ordering::Relaxed) {
        let r = rng.next();
        request_id += 1;
        let side = if r.is_multiple_of(2) { "buy" } else { "sell" };
        let price = format!("{}.{:02}", 3490 + (r >> 8) % 20, (r >> 16) % 100);
        let qty = format!("0.{:03}", 10 + (r >> 24) % 90);
        let client_order_id = client_order_id(seed, request_id);
        let key = format!("ws-{seed:x}-{request_id}");
        // The same order as a REST body (a retry may come over REST: keys are per user).
        let order = json!({"symbol": "ETH-USD", "side": side, "type": "limit", "price": price, "qty": qty, "client_order_id": client_order_id});
        let mut body = order.clone();
        body["op"] = json!("order.new");
        body["id"] = json!(request_id);
        body["idempotency_key"] = json!(key);
        let keyed = Keyed { user, key, body: order, answer: None };
        traded.keyed.push(keyed);
        if client::send_json(&mut ws, &body).await.is_err() {
            break;
        }
        // The server is killed at some point: a read error ends the trader.
        loop {
            let Ok(Message::Text(t)) = client::next(&mut ws).await else { break 'orders };
            let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
            if v["id"] != request_id {
                continue; // welcome, or something else
            }
            // An error answer is only checked for consistency (its REST retry may differ).
            let answer = match v["order"]["id"].as_u64() {
                Some(_) => (201, v["order"]["id"].clone()),
                None => (0, v["code"].clone()),
            };
            if let Some(last) = traded.keyed.last_mut() {
                last.answer = Some(answer);
            }
            if let (Some(id), Some(s)) = (v["order"]["id"].as_u64(), v["order"]["status"].as_str())
            {
                traded.acked.push(Acked { user, id, status: s.to_string(), via: "ws" });
            }
            break;
        }
    }
    traded
}

/// Logs in; `None` if the server went away first (it may be killed at any moment).
async fn try_login(addr: SocketAddr, user: usize) -> Option<Api> {
    let (name, password, _) = tickgate_gateway::auth::DEMO_USERS[user];
    let api = Api { addr, token: String::new() };
    let body = json!({"username": name, "password": password});
    let (status, v) = try_call(&api, "POST", "/api/v1/auth/login", Some(body)).await?;
    let token = v["token"].as_str().filter(|_| status == 200)?.to_string();
    Some(Api { addr, token })
}

/// One request; `None` when the connection fails (the server was killed).
async fn try_call(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    try_call_keyed(api, method, path, body, None).await
}

/// One request with an `Idempotency-Key` if given; `None` when the connection fails.
async fn try_call_keyed(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let key = key.map(|k| format!("Idempotency-Key: {k}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n{key}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        api.addr,
        api.token,
        body.len()
    );
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(api.addr).await.ok()?;
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text.get(9..12)?.parse().ok()?;
        Some((status, body_json(&text)))
    };
    tokio::time::timeout(Duration::from_secs(10), io).await.ok().flatten()
}

/// Retries every keyed request twice: the same answer both times, an acknowledged one's
/// original order, and no `client_order_id` on two orders (nothing executed twice).
async fn retry_every_keyed_request(apis: &[Api; 2], keyed: &[Keyed], round: u64) {
    let mut in_flight = 0;
    for k in keyed {
        let api = &apis[k.user];
        let mut answers = Vec::new();
        for _ in 0..2 {
            let (status, v) =
                try_call_keyed(api, "POST", "/api/v1/orders", Some(k.body.clone()), Some(&k.key))
                    .await
                    .expect("server up");
            answers.push(answer_of(status, &v));
        }
        assert_eq!(answers[0], answers[1], "round {round}: a retry changed its answer: {k:?}");
        match &k.answer {
            Some(first @ (201 | 422, _)) => {
                assert_eq!(&answers[0], first, "round {round}: retry of an answered request {k:?}")
            }
            Some(_) => {}
            None => {
                in_flight += 1;
                assert!(matches!(answers[0].0, 201 | 422), "in flight at the kill: {answers:?}");
            }
        }
    }
    for (user, api) in apis.iter().enumerate() {
        let mut seen = std::collections::HashMap::new();
        for o in all_pages(api, "/api/v1/orders", "orders").await {
            let client_order_id = o["client_order_id"].as_u64().expect("client_order_id");
            if let Some(other) = seen.insert(client_order_id, o["id"].clone()) {
                panic!("round {round}: user {user}: client_order_id {client_order_id} placed twice: orders {other} and {}", o["id"]);
            }
        }
    }
    println!("round {round}: {} keyed requests retried ({in_flight} were in flight at a kill), no duplicate", keyed.len());
}

/// A decimal string in units of its last digit ("-0.0150" -> -150).
fn decimal_units(s: &str) -> i64 {
    s.replace('.', "").parse().expect("a decimal")
}

/// Net quantity bought per symbol over every fill `/api/v1/fills` lists (all pages), with
/// no fill listed twice.
async fn net_fills(api: &Api) -> std::collections::BTreeMap<String, i64> {
    let mut net = std::collections::BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for f in all_pages(api, "/api/v1/fills", "fills").await {
        assert!(seen.insert(f["id"].as_u64().expect("id")), "fill listed twice: {f}");
        let qty = decimal_units(f["qty"].as_str().expect("qty"));
        let signed = if f["side"] == "buy" { qty } else { -qty };
        let symbol = f["symbol"].as_str().expect("symbol").to_string();
        *net.entry(symbol).or_insert(0) += signed;
    }
    net.retain(|_, q| *q != 0);
    net
}

/// Every item of a paginated list (`path` answers `{field: [...], next_cursor}`).
async fn all_pages(api: &Api, path: &str, field: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let page_path = match cursor {
            Some(c) => format!("{path}?limit=1000&cursor={c}"),
            None => format!("{path}?limit=1000"),
        };
        let (status, page) = try_call(api, "GET", &page_path, None).await.expect("server up");
        assert_eq!(status, 200, "{page}");
        items.extend(page[field].as_array().expect("a list").iter().cloned());
        match page["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => return items,
        }
    }
}

fn verify_journal(dir: &Path) -> Value {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["verify-journal", "--json"])
        .output()
        .expect("verify-journal runs");
    assert!(
        out.status.success(),
        "verify-journal failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, response) = http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    body_json(&response)
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_survive_sigkill() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    println!("crash test seed {seed}");
    let mut rng = Rng(seed | 1);
    let dir =
        TempDir(std::env::temp_dir().join(format!("tickgate-crash-{}-{seed}", std::process::id())));
    let mut acked: Vec<Acked> = Vec::new();
    let mut keyed: Vec<Keyed> = Vec::new();

    // Rounds 0 to 2 without snapshots: recovery replays the whole journal. Round 3
    // snapshots every 2,000 commands (and prunes segments): recovery starts from a
    // snapshot, and closed orders and fills from before it come from the order history
    // file; the same checks hold.
    const ROUNDS: u64 = 4;
    for round in 0..ROUNDS {
        let snapshot_every = if round == 3 { 2_000 } else { 0 };
        // Trading with the feed running, then SIGKILL at a random moment.
        let server = spawn(&dir.0, true, snapshot_every);
        let stop = Arc::new(AtomicBool::new(false));
        let mut traders: Vec<_> = [(0usize, 1u64), (0, 2), (1, 3)]
            .into_iter()
            .map(|(user, s)| {
                tokio::spawn(trader(server.addr, user, seed ^ (s << 32) ^ round, Arc::clone(&stop)))
            })
            .collect();
        for (user, s) in [(0usize, 4u64), (1, 5)] {
            let seed = seed ^ (s << 32) ^ round;
            traders.push(tokio::spawn(ws_trader(server.addr, user, seed, Arc::clone(&stop))));
        }
        let kill_after = Duration::from_millis(600 + rng.next() % 1200);
        tokio::time::sleep(kill_after).await;
        if round == 0 {
            // The journal's work is in the metrics: every command written, in batches
            // covered by syncs (group commit), and never fewer commands than batches.
            let (status, text) = http_raw(
                server.addr,
                &format!(
                    "GET /metrics HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
                    server.addr
                ),
            )
            .await;
            assert_eq!(status, 200);
            let journal = |name: &str| -> u64 {
                let prefix = format!("tickgate_journal_{name}_total{{shard=\"0\"}} ");
                let found = text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok());
                found.unwrap_or_else(|| panic!("no {prefix} in {text}"))
            };
            let (records, batches, syncs) =
                (journal("records"), journal("batches"), journal("syncs"));
            // (The counters are separate atomics read one after the other while the
            // journal runs: a batch's sync may be counted before the batch is, so the
            // syncs may be one ahead of the batches read; CI saw 1,022 and 1,023.)
            assert!(
                records >= batches && batches + 1 >= syncs && syncs > 0,
                "{records} {batches} {syncs}"
            );
            assert!(journal("bytes") > records, "records are longer than a byte");
        }
        drop(server); // SIGKILL, then reaped
        stop.store(true, Ordering::Relaxed);
        let mut this_round = 0;
        for t in traders {
            let got = t.await.expect("trader task");
            this_round += got.acked.len();
            acked.extend(got.acked);
            keyed.extend(got.keyed);
        }
        println!("round {round}: killed after {kill_after:?}, {this_round} orders acknowledged");
        assert!(this_round > 0, "round {round}: no order was acknowledged before the kill");

        // Restart without the feed: the state is exactly what the journal says.
        let server = spawn(&dir.0, false, snapshot_every);
        let apis = [Api::login(server.addr, 0).await, Api::login(server.addr, 1).await];
        for a in &acked {
            let path = format!("/api/v1/orders/{}", a.id);
            let (status, order) =
                try_call(&apis[a.user], "GET", &path, None).await.expect("server up");
            assert_eq!(status, 200, "acknowledged order {a:?} lost after the kill: {order}");
            let now = order["status"].as_str().unwrap_or_default();
            if a.status != "open" {
                assert_eq!(now, a.status, "terminal order {a:?} changed: {order}");
            }
            // The other user never sees it.
            let (other, _) = try_call(&apis[1 - a.user], "GET", &path, None).await.expect("up");
            assert_eq!(other, 404);
        }
        retry_every_keyed_request(&apis, &keyed, round).await;
        let live = get_json(server.addr, "/debug/digest").await;
        let replay = verify_journal(&dir.0);
        assert_eq!(replay["conserved"], true, "{replay}");
        let (live, replayed) = (&live["shards"][0], &replay["shards"][0]);
        assert_eq!(
            live["state_digest"], replayed["state_digest"],
            "live {live} vs replay {replayed}"
        );
        assert_eq!(live["journal_seq"], replayed["last_seq"]);
        if snapshot_every > 0 {
            let snapshots = std::fs::read_dir(dir.0.join("shard-0"))
                .expect("shard directory")
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tgs"))
                .count();
            assert!(snapshots >= 1, "round {round} took no snapshot");
            println!("round {round}: recovered from a snapshot ({snapshots} kept)");
        }
        // Every fill since the first start is listed once: per market, they add up to the
        // position the engine's ledger holds.
        for api in &apis {
            let from_fills = net_fills(api).await;
            let (status, positions) =
                try_call(api, "GET", "/api/v1/positions", None).await.expect("server up");
            assert_eq!(status, 200, "{positions}");
            let mut from_engine = std::collections::BTreeMap::new();
            for p in positions["positions"].as_array().expect("a list") {
                let qty = decimal_units(p["qty"].as_str().expect("qty"));
                from_engine.insert(p["symbol"].as_str().expect("symbol").to_string(), qty);
            }
            assert_eq!(from_fills, from_engine, "round {round}: fills against positions");
            println!("round {round}: positions {from_engine:?} agree with the fills");
        }
        drop(server);
    }
    let via_rest = acked.iter().filter(|a| a.via == "rest").count();
    let via_ws = acked.len() - via_rest;
    println!(
        "{} acknowledged orders checked across {ROUNDS} kills ({via_rest} over REST, {via_ws} over WebSocket)",
        acked.len()
    );
    assert!(via_ws > 0, "no order was acknowledged over WebSocket");

    // A flipped byte inside a batch that an intact batch follows, in the newest segment
    // (which recovery always reads): the server refuses to start and says where.
    let mut segments: Vec<_> = std::fs::read_dir(dir.0.join("shard-0"))
        .expect("shard directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tgj"))
        .collect();
    segments.sort();
    let (segment, offset) = segments
        .iter()
        .rev()
        .find_map(|path| {
            let bytes = std::fs::read(path).ok()?;
            // Batch frames: u32 length (after the 8-byte length+CRC), so the second batch
            // starts at 24 + 8 + first length. Damage the first batch's records.
            let len_at = |at: usize| -> Option<usize> {
                Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
            };
            let first_len = len_at(24)?;
            let second = 24 + 8 + first_len;
            // The second batch must be whole: a torn or zeroed one (the last run was
            // killed) would make the damaged first batch the journal's torn tail, which
            // recovery rightly cuts and starts from.
            let second_len = len_at(second)?;
            (second_len > 0 && bytes.len() >= second + 8 + second_len)
                .then_some((path.clone(), 24 + 16 + first_len / 2))
        })
        .expect("a segment with at least two batches");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    bytes[offset] ^= 0x5a;
    std::fs::write(&segment, &bytes).expect("write segment");
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--no-feed", "--data-dir"])
        .arg(&dir.0)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tickgate runs");
    // It must exit by itself; a server that started is killed and the test fails.
    let status = common::exits_within(&mut child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("tickgate started on a corrupt journal ({})", segment.display()));
    let out = child.wait_with_output().expect("output");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!status.success(), "started on a corrupt journal: {text}");
    assert!(text.contains(segment.to_str().expect("utf-8 path")), "{text}");
    assert!(text.contains("offset"), "{text}");
}

/// A data directory written with one shard count refuses to start with another (instrument
/// `i` is on shard `i % shards`: another count recovers the wrong books), saying which
/// count to use, and so does `verify-journal`; nothing in the directory changes.
#[test]
fn a_data_dir_refuses_another_shard_count() {
    let dir = std::env::temp_dir().join(format!("tickgate-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |shards: &str, extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--listen", "127.0.0.1:0", "--no-feed", "--shards", shards, "--data-dir"])
            .arg(&dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    // A first run with three shards, killed once it listens (as a crash would).
    let mut first = run("3", &[]).spawn().expect("starts");
    let stdout = first.stdout.take().expect("piped");
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("listening on http://"));
    first.kill().expect("kill");
    first.wait().expect("reaped");
    assert!(listening, "the first run starts");
    assert_eq!(std::fs::read_to_string(dir.join("SHARDS")).expect("recorded"), "3\n");
    let listing = |d: &Path| {
        let mut names: Vec<_> = walk(d);
        names.sort();
        names
    };
    let before = listing(&dir);

    for shards in ["1", "2", "4"] {
        let out = run(shards, &[]).output().expect("runs");
        assert!(!out.status.success(), "--shards {shards} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("written with 3 shards") && stderr.contains("--shards 3"),
            "{stderr}"
        );
        let out = run(shards, &["verify-journal"]).output().expect("runs");
        assert!(!out.status.success(), "verify-journal --shards {shards} ran");
        assert!(String::from_utf8_lossy(&out.stderr).contains("written with 3 shards"));
    }
    assert_eq!(listing(&dir), before, "refused starts change nothing");
    let out = run("3", &["verify-journal", "--json"]).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["shards"].as_array().map(Vec::len), Some(3), "{report}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
    // A directory with no journal at all (a typo) is no success either.
    let out = run("1", &["verify-journal"]).output().expect("runs");
    assert!(!out.status.success(), "verified nothing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no journal"));
}

/// Every file under `d` with its size (what a refused start must leave as it was).
fn walk(d: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(d).expect("readable").map_while(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.file_name().is_some_and(|n| n != "LOCK") {
            out.push((path.clone(), entry.metadata().map_or(0, |m| m.len())));
        }
    }
    out
}

/// A journal that cannot write any more (here: its directory taken away, as a disk that
/// fails) stops order entry, and the operator hears of it: `/healthz` answers 503
/// `failing` with the cause, and the log says so at once (the engine itself does not log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_failure_is_logged_and_healthz_fails() {
    let dir = TempDir(std::env::temp_dir().join(format!("tickgate-jfail-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--durability", "fsync", "--segment-mb", "1"])
        .args(["--feed-rate", "20000", "--data-dir"])
        .arg(&dir.0)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the tickgate binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut proc = Proc { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut log = Vec::new();
    while proc.addr.port() == 0 {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the server logs");
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on http://".len()..];
            let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            proc.addr = addr.parse().expect("an address");
        }
        log.push(line);
    }
    // An open order, for the kill switch below.
    let alice = Api::login(proc.addr, 0).await;
    let (status, open) = alice
        .order(json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1000.00", "qty": "0.0010"}))
        .await;
    assert_eq!(status, 201, "{open}");
    // The shard's journal directory goes away; a file stands where it was, so the next
    // segment (every 1 MiB, about a second of this feed) cannot be created.
    std::fs::rename(dir.0.join("shard-0"), dir.0.join("moved")).expect("rename");
    std::fs::write(dir.0.join("shard-0"), b"not a directory").expect("a file in its place");
    let health = loop {
        assert!(std::time::Instant::now() < deadline, "the journal never failed");
        let (status, response) = http_raw(
            proc.addr,
            &format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", proc.addr),
        )
        .await;
        if status == 503 {
            break body_json(&response);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["status"], "failing", "{health}");
    assert!(health["journal"]["failure"].as_str().is_some_and(|f| !f.is_empty()), "{health}");
    let logged = loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) if line.contains("ERROR") && line.contains("the journal failed") => {
                break true
            }
            Ok(line) => log.push(line),
            Err(_) => break false,
        }
    };
    assert!(logged, "no ERROR line about the journal; the log:\n{}", log.join("\n"));
    let (status, refused) = alice
        .order(json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1000.00", "qty": "0.0010"}))
        .await;
    assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("journal_failed")));
    // A kill switch that could cancel nothing says so by its status, not a 200 whose
    // every entry is a refusal.
    let (status, refused) = alice.call("DELETE", "/api/v1/orders", None, "").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (503, Some("journal_failed")),
        "{refused}"
    );
    let (_, still) = alice.call("GET", &format!("/api/v1/orders/{}", open["id"]), None, "").await;
    assert_eq!(still["status"], "open", "{still}");
}

/// A data directory whose first run had no feed gets a live market when a later run has
/// one: the feed funds its accounts the journal does not know (it used to fund them only
/// on a fresh directory, so every order of the feed was refused for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_without_the_feed_does_not_starve_a_later_feed() {
    let dir = TempDir(std::env::temp_dir().join(format!("tickgate-nofeed-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    drop(spawn(&dir.0, false, 1_000_000));
    let proc = spawn(&dir.0, true, 1_000_000);
    let counter = |metrics: &str, name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_raw(
            proc.addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", proc.addr),
        )
        .await;
        let (trades, commands, rejects) = (
            counter(&metrics, "tickgate_engine_trades_total"),
            counter(&metrics, "tickgate_engine_commands_total"),
            counter(&metrics, "tickgate_engine_rejects_total"),
        );
        if trades > 0 && commands > 1_000 {
            // The feed's orders are taken (a starved feed had nearly all refused).
            assert!(rejects * 2 < commands, "{rejects} of {commands} refused");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no trade: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A start on a port already in use (a second start, a mistyped port) fails before it
/// touches the data directory: none is left behind, locked to a shard count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_stops_the_start_before_the_data_directory_is_made() {
    let first = start(|_| {}).await;
    let dir = TempDir(std::env::temp_dir().join(format!("tickgate-busy-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let mut config = tickgate_gateway::Config::for_tests();
    config.listen = first.local_addr();
    config.durability = Some(tickgate_engine::durable::DurabilityConfig::new(&dir.0));
    let refused = tickgate_gateway::Server::start(config).await.map(|_| ()).expect_err("busy");
    let said = format!("{refused:#}");
    assert!(said.contains(&format!("listening on {}", first.local_addr())), "{said}");
    assert!(!dir.0.exists(), "the data directory was made: {:?}", std::fs::read_dir(&dir.0).ok());
    first.shutdown().await.expect("clean shutdown");
}
