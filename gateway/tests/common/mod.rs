#![allow(dead_code, unreachable_pub, missing_docs)]
//! Shared helpers: a real server on 127.0.0.1:0 and real WebSocket clients.

use std::time::Duration;

use serde_json::Value;
use tickgate_engine::runtime::EngineHandle;
use tickgate_engine::*;
use tickgate_gateway::client::{self, Client, Message};
use tickgate_gateway::{Config, Server};

pub const WAIT: Duration = Duration::from_secs(10);

pub async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config::for_tests();
    tweak(&mut config);
    Server::start(config).await.expect("server starts")
}

/// Connects and consumes the welcome message.
pub async fn connect(server: &Server, query: &str) -> Client {
    let mut ws =
        client::connect(server.local_addr(), &format!("/ws{query}")).await.expect("connects");
    let welcome = text(&mut ws).await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    ws
}

pub async fn next(ws: &mut Client) -> Message {
    tokio::time::timeout(WAIT, client::next(ws))
        .await
        .expect("a frame within the timeout")
        .expect("read")
}

/// The next text frame as JSON (skipping binary frames).
pub async fn text(ws: &mut Client) -> Value {
    loop {
        match next(ws).await {
            Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
            Message::Binary(_) => continue,
            Message::Close(code, reason) => panic!("closed: {code:?} {reason}"),
        }
    }
}

/// Sends a request and returns the next control reply (an object with `op`).
pub async fn request(ws: &mut Client, body: Value) -> Value {
    client::send_json(ws, &body).await.expect("send");
    loop {
        let v = text(ws).await;
        if v.is_object() && v.get("op").is_some() {
            return v;
        }
    }
}

pub fn symbol_id(engine: &EngineHandle, symbol: &str) -> InstrumentId {
    engine.instrument_by_symbol(symbol).expect("default instrument").id
}

/// Funds accounts 1 and 2 with plenty of everything on every shard.
pub fn fund(engine: &EngineHandle) {
    for shard in 0..engine.shards() {
        for account in [1u32, 2] {
            for (i, asset) in engine.assets().iter().enumerate() {
                let amount = Amount(10i64.pow(u32::from(asset.precision)) * 1_000_000_000);
                let t = Transfer {
                    account: AccountId(account),
                    asset: AssetId(i as u16),
                    amount,
                    request_id: 0,
                };
                engine.submit_transfer(shard, t).expect("queue has room");
            }
        }
    }
}

pub fn order(
    engine: &EngineHandle,
    account: u32,
    instrument: InstrumentId,
    side: Side,
    order_type: OrderType,
    price: i64,
    qty: i64,
) -> OrderId {
    let id = engine.allocate_order_id();
    let command = CommandKind::New(NewOrder {
        key: None,
        order_id: id,
        client_order_id: id.0,
        account: AccountId(account),
        instrument,
        side,
        order_type,
        price: Price(price),
        qty: Qty(qty),
        stp: StpMode::None,
    });
    // A full queue drains by itself: submit again (many orders in a row may fill it).
    let deadline = std::time::Instant::now() + WAIT;
    while let Err(e) = engine.submit(command) {
        assert!(std::time::Instant::now() < deadline, "the queue never had room: {e}");
        std::thread::yield_now();
    }
    id
}

/// Waits until `check` holds, polling.
pub async fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

use tickgate_gateway::protocol::{self, body_i64, MsgType};

/// What a binary client has seen on one book channel and one trades channel.
#[derive(Default, Debug)]
pub struct Follower {
    pub book: Option<L2Book>,
    pub book_channel: u32,
    pub trades_channel: u32,
    pub last_trade_seq: Option<u64>,
    pub trades: u64,
    pub deltas: Vec<(u64, Side, i64, i64)>,
    pub resyncs: u64,
    pub gaps: Vec<(u64, u64)>,
}

impl Follower {
    /// Applies one binary frame; panics on any sequence break the protocol forbids.
    pub fn apply(&mut self, payload: &[u8]) {
        for msg in protocol::decode(payload) {
            let msg = msg.expect("well-formed message");
            match msg.msg_type {
                MsgType::BookSnapshot if msg.channel == self.book_channel => {
                    let (bids, asks) =
                        protocol::decode_book_snapshot(msg.body).expect("snapshot body");
                    if msg.flags & protocol::FLAG_RESYNC != 0 {
                        self.resyncs += 1;
                    }
                    self.book = Some(L2Book::from_snapshot(&BookSnapshot {
                        seq: Seq(msg.seq),
                        bids,
                        asks,
                    }));
                }
                MsgType::BookDelta if msg.channel == self.book_channel => {
                    let book = self.book.as_mut().expect("snapshot before deltas");
                    let delta = protocol::decode_book_delta(&msg).expect("delta body");
                    assert_eq!(book.apply(&delta), Ok(true), "contiguous book sequence");
                    self.deltas.push((msg.seq, delta.side, delta.price.0, delta.qty.0));
                }
                MsgType::TradesSnapshot if msg.channel == self.trades_channel => {
                    if msg.flags & protocol::FLAG_RESYNC != 0 {
                        self.resyncs += 1;
                    }
                    self.last_trade_seq = Some(msg.seq);
                }
                MsgType::Trade if msg.channel == self.trades_channel => {
                    let last = self.last_trade_seq.expect("snapshot before trades");
                    assert_eq!(
                        msg.seq,
                        last + 1,
                        "contiguous trade sequence (channel {})",
                        msg.channel
                    );
                    self.last_trade_seq = Some(msg.seq);
                    self.trades += 1;
                }
                MsgType::Gap if msg.channel == self.trades_channel => {
                    let (from, to) = (
                        body_i64(msg.body, 0).expect("from") as u64,
                        body_i64(msg.body, 1).expect("to") as u64,
                    );
                    assert_eq!(
                        Some(from),
                        self.last_trade_seq.map(|s| s + 1),
                        "gap starts where we were"
                    );
                    self.gaps.push((from, to));
                    self.last_trade_seq = Some(to);
                }
                _ => {}
            }
        }
    }
}

/// A raw HTTP/1.1 exchange (`Connection: close`): returns (status, headers+body text).
pub async fn http_raw(addr: std::net::SocketAddr, request_head: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    http_on(&mut stream, request_head).await
}

/// [`http_raw`] on a connection opened beforehand.
pub async fn http_on(stream: &mut tokio::net::TcpStream, request_head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request_head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// The JSON body of a raw HTTP response.
pub fn body_json(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A logged-in REST user speaking raw HTTP/1.1.
pub struct Api {
    pub addr: std::net::SocketAddr,
    pub token: String,
}

impl Api {
    pub async fn login(addr: std::net::SocketAddr, user: usize) -> Api {
        let (name, password, _) = tickgate_gateway::auth::DEMO_USERS[user];
        let body = serde_json::json!({"username": name, "password": password}).to_string();
        let req = format!("POST /api/v1/auth/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let (status, response) = http_raw(addr, &req).await;
        assert_eq!(status, 200, "{response}");
        Api { addr, token: body_json(&response)["token"].as_str().expect("token").to_string() }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &str,
    ) -> (u16, Value) {
        let addr = self.addr;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            self.token,
            body.len()
        );
        let (status, response) = http_raw(addr, &req).await;
        (status, body_json(&response))
    }

    pub async fn order(&self, body: Value) -> (u16, Value) {
        self.call("POST", "/api/v1/orders", Some(body), "").await
    }

    pub async fn balance(&self, asset: &str) -> Value {
        let (_, account) = self.call("GET", "/api/v1/account", None, "").await;
        account["balances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["asset"] == asset)
            .cloned()
            .unwrap()
    }
}

/// A child process, killed (SIGKILL) on drop whatever happens in the test.
pub struct Proc {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `within` for `child` to exit by itself; one still running then is killed
/// (and reaped) and `None` is returned.
pub fn exits_within(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
