//! The SSE alert stream over real HTTP: price alerts set over REST and fired by trades,
//! fills, `Last-Event-ID` replay and `reset`, several tabs, isolation between users, auth
//! failures, heartbeats, limits and shutdown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::time::timeout;

/// One SSE block: `id`, `event`, `data` (JSON), or a comment.
#[derive(Debug, Clone)]
struct Block {
    id: Option<u64>,
    event: String,
    data: Value,
    comment: Option<String>,
    retry: Option<u64>,
}

struct Stream {
    body: Incoming,
    buf: String,
    // The connection's task, and its request handle: dropping the handle ends it.
    _conn: tokio::task::JoinHandle<()>,
    _sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
}

/// Opens `GET /api/v1/alerts/stream` with a bearer token or a query token; on a non-200
/// answer returns the status, headers and JSON body instead.
async fn open(
    addr: SocketAddr,
    bearer: Option<&str>,
    query: &str,
    last_event_id: Option<u64>,
) -> Result<(Stream, hyper::HeaderMap), (u16, hyper::HeaderMap, Value)> {
    open_on(addr, bearer, query, last_event_id, false).await
}

/// `after_request`: send another request on the connection first, so the stream request
/// is served by hyper (a fresh connection's first stream request is served without it).
async fn open_on(
    addr: SocketAddr,
    bearer: Option<&str>,
    query: &str,
    last_event_id: Option<u64>,
    after_request: bool,
) -> Result<(Stream, hyper::HeaderMap), (u16, hyper::HeaderMap, Value)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    if after_request {
        let req = hyper::Request::get("/api/v1/instruments")
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = sender.send_request(req).await.expect("response");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body");
    }
    let mut req = hyper::Request::get(format!("/api/v1/alerts/stream{query}"))
        .header("host", addr.to_string());
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let req = req.body(http_body_util::Empty::<bytes::Bytes>::new()).expect("request");
    // After a first request the connection must be ready again before the next one.
    sender.ready().await.expect("connection ready");
    let response = sender.send_request(req).await.expect("response");
    let (parts, body) = response.into_parts();
    if parts.status != 200 {
        let bytes = body.collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return Err((parts.status.as_u16(), parts.headers, json));
    }
    Ok((Stream { body, buf: String::new(), _conn: conn, _sender: sender }, parts.headers))
}

impl Stream {
    /// The next block (event, comment or retry); `None` when the stream ended.
    async fn block(&mut self) -> Option<Block> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut b = Block {
                    id: None,
                    event: String::new(),
                    data: Value::Null,
                    comment: None,
                    retry: None,
                };
                for line in raw.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        b.comment = Some(c.trim().to_string());
                    } else if let Some((field, value)) = line.split_once(": ") {
                        match field {
                            "id" => b.id = value.parse().ok(),
                            "event" => b.event = value.to_string(),
                            "data" => b.data = serde_json::from_str(value).expect("JSON data"),
                            "retry" => b.retry = value.parse().ok(),
                            _ => panic!("unexpected field {field}"),
                        }
                    }
                }
                return Some(b);
            }
            let frame = timeout(WAIT, self.body.frame()).await.expect("an SSE block in time")?;
            let frame = frame.expect("body frame");
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).expect("utf-8"));
            }
        }
    }

    /// The next event (skipping comments and the retry advice).
    async fn event(&mut self) -> Block {
        loop {
            let b = self.block().await.expect("stream open");
            if !b.event.is_empty() {
                return b;
            }
        }
    }
}

async fn trade(addr: SocketAddr, symbol: &str, price: &str, qty: &str) {
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let (s, v) = alice
        .order(
            json!({"symbol": symbol, "side": "sell", "type": "limit", "price": price, "qty": qty}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = bob
        .order(json!({"symbol": symbol, "side": "buy", "type": "ioc", "price": price, "qty": qty}))
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_price_alert_fires_exactly_once_into_every_tab_of_its_user_only() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let (status, alert) = alice
        .call(
            "POST",
            "/api/v1/alerts",
            Some(json!({"symbol": "ETH-USD", "condition": "above", "price": "3600.00"})),
            "",
        )
        .await;
    assert_eq!(status, 201, "{alert}");
    assert_eq!(
        (alert["condition"].as_str(), alert["repeat"].as_bool()),
        (Some("above"), Some(false))
    );
    let (mut tab1, headers) = open(addr, Some(&alice.token), "", None).await.expect("stream");
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let first = tab1.block().await.expect("retry advice");
    assert_eq!(first.retry, Some(2000));
    let (mut tab2, _) =
        open(addr, None, &format!("?token={}", alice.token), None).await.expect("query token");
    let (mut bobs, _) = open(addr, Some(&bob.token), "", None).await.expect("bob's stream");

    trade(addr, "ETH-USD", "3500.00", "0.100").await; // below: nothing
    trade(addr, "ETH-USD", "3600.00", "0.100").await; // fires
    trade(addr, "ETH-USD", "3700.00", "0.100").await; // above again: one-shot is gone

    for tab in [&mut tab1, &mut tab2] {
        let mut prices = Vec::new();
        let mut fills = 0;
        // Alice's three fills arrive after or around the price event: read until all three.
        while fills < 3 {
            let e = tab.event().await;
            match e.event.as_str() {
                "price" => prices.push(e),
                "fill" => fills += 1,
                other => panic!("unexpected event {other}"),
            }
        }
        assert_eq!(prices.len(), 1, "{prices:?}");
        let p = &prices[0].data;
        assert_eq!(
            (p["symbol"].as_str(), p["price"].as_str(), p["last_price"].as_str()),
            (Some("ETH-USD"), Some("3600.00"), Some("3600.00"))
        );
        assert_eq!(p["alert_id"], alert["id"]);
    }
    // Bob's stream has Bob's fills only.
    let mut bob_events = Vec::new();
    while bob_events.len() < 3 {
        bob_events.push(bobs.event().await);
    }
    assert!(bob_events.iter().all(|e| e.event == "fill"), "{bob_events:?}");
    assert!(bob_events.iter().all(|e| e.data["side"] == "buy"), "{bob_events:?}");
    let (_, list) = alice.call("GET", "/api/v1/alerts", None, "").await;
    assert_eq!(list["alerts"], json!([]), "a fired one-shot alert is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_last_event_id_replays_exactly_what_was_missed() {
    let server = start(|c| c.sse_history = 6).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;
    let (mut s, _) = open(addr, Some(&alice.token), "", None).await.expect("stream");
    trade(addr, "SOL-USD", "150.00", "1.00").await;
    let seen = s.event().await;
    assert_eq!(seen.event, "fill");
    let last = seen.id.expect("events carry ids");
    drop(s);

    // While disconnected: two more fills.
    trade(addr, "SOL-USD", "151.00", "1.00").await;
    trade(addr, "SOL-USD", "152.00", "1.00").await;
    let (mut s, _) = open(addr, Some(&alice.token), "", Some(last)).await.expect("reconnect");
    let a = s.event().await;
    let b = s.event().await;
    assert_eq!(
        (a.data["price"].as_str(), b.data["price"].as_str()),
        (Some("151.00"), Some("152.00"))
    );
    assert!(a.id.unwrap() > last && b.id.unwrap() > a.id.unwrap());
    // Then live, with no duplicate in between.
    trade(addr, "SOL-USD", "153.00", "1.00").await;
    let c = s.event().await;
    assert_eq!(c.data["price"], "153.00");
    assert!(c.id.unwrap() > b.id.unwrap());

    // The query parameter works as well (first connection of an EventSource).
    let (mut q, _) =
        open(addr, Some(&alice.token), &format!("?last_event_id={}", b.id.unwrap()), None)
            .await
            .expect("query id");
    assert_eq!(q.event().await.id, c.id);

    // Too old: more events than the history keeps went by (seen on a live stream first:
    // alerts are evaluated on a thread of their own, which may trail the order answers).
    drop(s);
    drop(q);
    let (mut live, _) = open(addr, Some(&alice.token), "", c.id).await.expect("live");
    for i in 0..4 {
        trade(addr, "SOL-USD", &format!("16{i}.00"), "1.00").await;
    }
    for i in 0..4 {
        assert_eq!(live.event().await.data["price"], format!("16{i}.00"));
    }
    drop(live);
    let (mut s, _) = open(addr, Some(&alice.token), "", Some(last)).await.expect("reconnect");
    let reset = s.event().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(reset.data["reason"], "history_exceeded");
    // Its id is the newest, so the next reconnect continues from there.
    let (mut again, _) = open(addr, Some(&alice.token), "", reset.id).await.expect("reconnect");
    trade(addr, "SOL-USD", "170.00", "1.00").await;
    let next = again.event().await;
    assert_eq!((next.event.as_str(), next.data["price"].as_str()), ("fill", Some("170.00")));
    // An id this server never gave (e.g. from before a restart): reset too.
    let (mut future, _) =
        open(addr, Some(&alice.token), "", Some(u64::MAX - 1)).await.expect("stream");
    assert_eq!(future.event().await.event, "reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_and_limits_answer_json_not_a_stream() {
    let server = start(|c| {
        c.sse.streams_per_user_max = 2;
        c.sse.heartbeat = Duration::from_millis(200);
    })
    .await;
    let addr = server.local_addr();
    for (bearer, query) in [(None, ""), (Some("forged.token.x"), ""), (None, "?token=nope")] {
        let Err((status, headers, body)) = open(addr, bearer, query, None).await else {
            panic!("a stream without a valid token");
        };
        assert_eq!(status, 401);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let alice = Api::login(addr, 0).await;
    let Err((status, _, body)) = open(addr, Some(&alice.token), "?last_event_id=abc", None).await
    else {
        panic!("a bad Last-Event-ID was accepted");
    };
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")));

    let (mut one, _) = open(addr, Some(&alice.token), "", None).await.expect("first");
    let (_two, _) = open(addr, Some(&alice.token), "", None).await.expect("second");
    let Err((status, headers, body)) = open(addr, Some(&alice.token), "", None).await else {
        panic!("over the per-user limit");
    };
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_streams")));
    assert!(headers.contains_key("retry-after"));

    // Idle: heartbeat comments.
    let retry = one.block().await.expect("retry");
    assert_eq!(retry.retry, Some(2000));
    let hb = one.block().await.expect("heartbeat");
    assert_eq!(hb.comment.as_deref(), Some("heartbeat"));

    // A closed stream frees its place.
    drop(one);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(s) = open(addr, Some(&alice.token), "", None).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut last, _) = reopened.expect("the place of a closed stream is freed");

    // Shutdown: a system notice, then the stream ends cleanly.
    server.shutdown().await.expect("clean shutdown");
    let notice = last.event().await;
    assert_eq!(
        (notice.event.as_str(), notice.data["notice"].as_str()),
        ("system", Some("shutting_down"))
    );
    loop {
        match last.block().await {
            None => break,
            Some(b) => assert!(b.comment.is_some(), "only heartbeats may follow: {b:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_keep_alive_connection_works_the_same() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;
    let (mut s, headers) =
        open_on(addr, Some(&alice.token), "", None, true).await.expect("stream through hyper");
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(s.block().await.expect("retry").retry, Some(2000));
    trade(addr, "ADA-USD", "0.4500", "10.0").await;
    let fill = s.event().await;
    assert_eq!((fill.event.as_str(), fill.data["price"].as_str()), ("fill", Some("0.4500")));
    drop(s);
    trade(addr, "ADA-USD", "0.4600", "10.0").await;
    let (mut again, _) =
        open_on(addr, Some(&alice.token), "", fill.id, true).await.expect("reconnect");
    let missed = again.event().await;
    assert_eq!(missed.data["price"], "0.4600");
    let Err((status, _, body)) = open_on(addr, None, "", None, true).await else {
        panic!("no token, yet a stream");
    };
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halting_an_instrument_rejects_orders_and_notifies_every_user() {
    let server = start(|c| c.admin_token = Some("operator-secret".into())).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let (mut a, _) = open(addr, Some(&alice.token), "", None).await.expect("alice");
    let (mut b, _) = open(addr, Some(&bob.token), "", None).await.expect("bob");
    let admin = |path: &str, token: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n")
    };
    let halt = "/api/v1/admin/instruments/ETH-USD/halt";
    let (status, _) = http_raw(addr, &admin(halt, &alice.token)).await;
    assert_eq!(status, 401, "a user token is not the operator token");
    let (status, response) = http_raw(addr, &admin(halt, "operator-secret")).await;
    assert_eq!(
        (status, body_json(&response)["status"].as_str()),
        (200, Some("halted")),
        "{response}"
    );
    for s in [&mut a, &mut b] {
        let notice = s.event().await;
        assert_eq!(
            (notice.event.as_str(), notice.data["notice"].as_str()),
            ("system", Some("instrument_halted"))
        );
        assert_eq!(notice.data["symbol"], "ETH-USD");
    }
    let order = json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "3000.00", "qty": "1.000"});
    let (status, refused) = alice.order(order.clone()).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (422, Some("instrument_halted")));
    let (status, _) = alice.order(json!({"symbol": "SOL-USD", "side": "buy", "type": "limit", "price": "100.00", "qty": "1.00"})).await;
    assert_eq!(status, 201, "other instruments still trade");
    let (status, response) =
        http_raw(addr, &admin("/api/v1/admin/instruments/ETH-USD/resume", "operator-secret")).await;
    assert_eq!((status, body_json(&response)["status"].as_str()), (200, Some("trading")));
    let notice = a.event().await;
    assert_eq!(notice.data["notice"], "instrument_resumed");
    assert_eq!(alice.order(order).await.0, 201);
    // A repeated command changes nothing and tells nobody: the next notice is the halt's.
    let resume = "/api/v1/admin/instruments/ETH-USD/resume";
    let (status, response) = http_raw(addr, &admin(resume, "operator-secret")).await;
    assert_eq!((status, body_json(&response)["status"].as_str()), (200, Some("trading")));
    let (status, _) = http_raw(addr, &admin(halt, "operator-secret")).await;
    assert_eq!(status, 200);
    assert_eq!(a.event().await.data["notice"], "instrument_halted");
    let (status, _) =
        http_raw(addr, &admin("/api/v1/admin/instruments/NOPE/halt", "operator-secret")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_are_off_without_a_token() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let head = format!("POST /api/v1/admin/instruments/ETH-USD/halt HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer anything\r\nContent-Length: 0\r\n\r\n");
    let (status, response) = http_raw(addr, &head).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (403, Some("admin_disabled"))
    );
}

/// The first bytes of the answer to `head`, up to the end of its head (the stream stays
/// open, so reading to the end would not end).
async fn answer_head(addr: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed without an answer: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A fresh connection's stream request (served without hyper) takes heads as big as
/// proxies and browsers make them, as hyper's path does; past 64 KiB or 100 header lines
/// the answer is a JSON 431, never a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_stream_request_takes_big_heads_and_refuses_huge_ones_with_json() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;
    let head = |extra: &str| {
        format!(
            "GET /api/v1/alerts/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n{extra}\r\n",
            alice.token
        )
    };
    let lines = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    let pad = |n: usize| format!("X-Pad: {}\r\n", "a".repeat(n));
    for (what, extra) in [("60 header lines", lines(60)), ("a 20 KB header", pad(20_000))] {
        let answer = answer_head(addr, &head(&extra)).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{what}: {answer}");
        assert!(answer.contains("content-type: text/event-stream"), "{what}: {answer}");
    }
    for (what, extra) in [("120 header lines", lines(120)), ("a 70 KB header", pad(70_000))] {
        let (status, response) = http_raw(addr, &head(&extra)).await;
        assert_eq!(status, 431, "{what}: {response}");
        assert_eq!(body_json(&response)["error"]["code"], "head_too_large", "{what}");
    }
    server.shutdown().await.expect("clean shutdown");
}

/// An alert price is checked as an order's is: one no trade can reach is refused with the
/// band, zeros past the precision are the same price, and a huge one names the band too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_prices_outside_the_band_are_refused() {
    let server = start(|_| {}).await;
    let alice = Api::login(server.local_addr(), 0).await;
    let post = |price: &str| {
        let body = json!({"symbol": "BTC-USD", "condition": "above", "price": price});
        alice.call("POST", "/api/v1/alerts", Some(body), "")
    };
    for price in ["99999999.00", "0.00", "-5.00"] {
        let (status, refused) = post(price).await;
        assert_eq!(status, 422, "{price}: {refused}");
        assert_eq!(refused["error"]["code"], "price_out_of_band", "{price}: {refused}");
        let message = refused["error"]["message"].as_str().expect("message");
        assert!(message.contains("0.01 to 6500000.00"), "{message}");
    }
    let (status, refused) = post("99999999999999999999.00").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (422, Some("invalid_price")));
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.ends_with("(price_min 0.01, price_max 6500000.00)"), "{message}");
    let (status, kept) = post("70000.000000").await;
    assert_eq!((status, kept["price"].as_str()), (201, Some("70000.00")), "{kept}");
    let (_, list) = alice.call("GET", "/api/v1/alerts", None, "").await;
    assert_eq!(list["alerts"].as_array().map(Vec::len), Some(1), "{list}");
}

/// With two engine shards each shard numbers an account's reports itself: a `fill` event
/// carries the fill's id in `GET /api/v1/fills` and the shard its `report_seq` counts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_events_carry_the_fill_id_and_the_shard() {
    let server = start(|c| c.shards = 2).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;
    let (mut stream, _) = open(addr, Some(&alice.token), "", None).await.expect("stream");
    // BTC-USD is instrument 0 (shard 0), ETH-USD instrument 1 (shard 1).
    trade(addr, "BTC-USD", "100.00", "0.0100").await;
    trade(addr, "ETH-USD", "100.00", "0.010").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = stream.event().await;
        if e.event == "fill" {
            let d = &e.data;
            seen.push((d["symbol"].clone(), d["fill_id"].clone(), d["shard"].as_u64()));
        }
    }
    let (_, fills) = alice.call("GET", "/api/v1/fills", None, "").await;
    let mut listed: Vec<_> = fills["fills"]
        .as_array()
        .expect("fills")
        .iter()
        .map(|f| (f["symbol"].clone(), f["id"].clone()))
        .collect();
    listed.sort_by_key(|(s, _)| s.to_string());
    // The two shards' events may come in either order.
    seen.sort_by_key(|(s, _, _)| s.to_string());
    let events: Vec<_> = seen.iter().map(|(s, id, _)| (s.clone(), id.clone())).collect();
    assert_eq!(events, listed, "the events' fill ids are the listed ones");
    let shards: Vec<_> = seen.iter().map(|(_, _, shard)| *shard).collect();
    assert_eq!(shards, [Some(0), Some(1)], "BTC on shard 0, ETH on 1: {seen:?}");
}
