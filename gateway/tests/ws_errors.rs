//! Every kind of bad input gets its documented answer over a real socket, and the server
//! keeps serving everyone else.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;
use tickgate_gateway::client::{self, Message};
use tickgate_gateway::protocol::close;

async fn expect_close(ws: &mut client::Client) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, client::next(ws)).await.expect("close in time") {
            Ok(Message::Close(code, _)) => return code,
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_replies_and_the_connection_stays_usable() {
    let server = start(|c| c.ws.subscriptions_per_connection_max = 3).await;
    let mut ws = connect(&server, "").await;
    let cases = [
        (json!("not an object"), "malformed"),
        (json!({"id": 1}), "unknown_op"),
        (json!({"op": "trade", "id": 2}), "unknown_op"),
        (json!({"op": "subscribe", "id": 3}), "malformed"),
        (json!({"op": "subscribe", "id": 4, "channels": ["candles.BTC-USD"]}), "unknown_channel"),
        (json!({"op": "subscribe", "id": 5, "channels": ["book"]}), "unknown_channel"),
        (json!({"op": "subscribe", "id": 6, "channels": ["book.NOPE-USD"]}), "unknown_symbol"),
        (
            json!({"op": "subscribe", "id": 7, "channels": ["book.BTC-USD"], "depth": 5000}),
            "invalid_depth",
        ),
        (json!({"op": "unsubscribe", "id": 8, "channels": ["book.BTC-USD"]}), "not_subscribed"),
        (
            json!({"op": "subscribe", "id": 9, "channels": ["book.BTC-USD", "bbo.BTC-USD", "trades.BTC-USD", "book.ETH-USD"]}),
            "limit_exceeded",
        ),
        // A field of the wrong type still echoes the id, whatever JSON number or string.
        (json!({"op": "subscribe", "id": 2, "channels": "book.BTC-USD"}), "malformed"),
        (json!({"op": "subscribe", "id": -1, "channels": 5}), "malformed"),
        (json!({"op": "ping", "id": 1.5, "depth": "x"}), "malformed"),
        (
            json!({"op": "order.new", "id": "o-1", "symbol": "BTC-USD", "side": "buy", "type": "limit", "price": 1000.5, "qty": "1"}),
            "malformed",
        ),
    ];
    for (body, code) in cases {
        let reply = request(&mut ws, body.clone()).await;
        assert_eq!(reply["op"], "error", "{body} -> {reply}");
        assert_eq!(reply["code"], code, "{body} -> {reply}");
        if let Some(id) = body.get("id") {
            assert_eq!(&reply["id"], id, "the id is echoed");
        }
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Invalid JSON text (not even parseable) is malformed too.
    ws.write_frame(Frame::text(Payload::Owned(b"{nope".to_vec()))).await.expect("send");
    assert_eq!(text(&mut ws).await["code"], "malformed");
    // A failed all-or-nothing subscribe changed nothing: three subscriptions still fit.
    let ok = request(&mut ws, json!({"op": "subscribe", "id": 10, "channels": ["book.BTC-USD", "bbo.BTC-USD", "trades.BTC-USD"]})).await;
    assert_eq!(ok["op"], "subscribed", "{ok}");
    let unsub =
        request(&mut ws, json!({"op": "unsubscribe", "id": 11, "channels": ["bbo.BTC-USD"]})).await;
    assert_eq!(unsub["op"], "unsubscribed");
    let pong = request(&mut ws, json!({"op": "ping", "id": "still-here"})).await;
    assert_eq!((pong["op"].as_str(), pong["id"].as_str()), (Some("pong"), Some("still-here")));
    assert!(server.metrics().ws_errors_total.load(Ordering::Relaxed) >= 11);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_documented_codes_and_others_keep_working() {
    let server = start(|c| {
        c.ws.inbound_rate_per_sec = 5;
        c.ws.inbound_burst = 5;
    })
    .await;
    let mut bystander = connect(&server, "").await;

    // Oversized message: 1009.
    let mut ws = connect(&server, "").await;
    let big = format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(5000));
    ws.write_frame(Frame::text(Payload::Owned(big.into_bytes()))).await.expect("send");
    assert_eq!(expect_close(&mut ws).await, Some(close::TOO_BIG));

    // Binary data from the client: 1003.
    let mut ws = connect(&server, "").await;
    ws.write_frame(Frame::binary(Payload::Owned(vec![1, 2, 3]))).await.expect("send");
    assert_eq!(expect_close(&mut ws).await, Some(close::UNSUPPORTED_DATA));

    // Fragmented text: 1003.
    let mut ws = connect(&server, "").await;
    ws.write_frame(Frame::new(false, OpCode::Text, None, Payload::Owned(b"{\"op\":".to_vec())))
        .await
        .expect("send");
    assert_eq!(expect_close(&mut ws).await, Some(close::UNSUPPORTED_DATA));

    // Flooding: rate_limited errors, then 1008.
    let mut ws = connect(&server, "").await;
    for _ in 0..30 {
        client::send_json(&mut ws, &json!({"op": "ping"})).await.expect("send");
    }
    let mut rate_limited = 0;
    let code = loop {
        match next(&mut ws).await {
            Message::Text(t) if t.contains("rate_limited") => rate_limited += 1,
            Message::Close(code, _) => break code,
            _ => {}
        }
    };
    assert!(rate_limited > 0, "told it was rate limited before being closed");
    assert_eq!(code, Some(close::POLICY));

    // The bystander was never affected.
    let pong = request(&mut bystander, json!({"op": "ping", "id": 1})).await;
    assert_eq!(pong["op"], "pong");
    assert!(server.metrics().ws_protocol_closes_total.load(Ordering::Relaxed) >= 4);
    server.shutdown().await.expect("clean shutdown");
}

/// The next pong a client gets, or its close code: `Ok(payload)` or `Err(code)`.
async fn next_pong_or_close(ws: &mut client::Client) -> Result<Vec<u8>, Option<u16>> {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.read_frame())
            .await
            .expect("a frame in time")
            .expect("a frame");
        match frame.opcode {
            OpCode::Pong => return Ok(frame.payload.to_vec()),
            OpCode::Close => {
                let p = frame.payload.to_vec();
                return Err((p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])));
            }
            _ => {}
        }
    }
}

/// WebSocket pings count against the inbound rate, four to a message: a client within it
/// gets every pong; a flood gets pongs for the burst's worth, then none, then a 1008 close,
/// and the server keeps serving the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_pong_floods_are_rate_limited_like_messages() {
    let server = start(|c| {
        c.ws.inbound_rate_per_sec = 5;
        c.ws.inbound_burst = 5;
    })
    .await;
    let mut bystander = connect(&server, "").await;

    let mut steady = connect(&server, "").await;
    for n in 0..12u8 {
        let ping = Frame::new(true, OpCode::Ping, None, Payload::Owned(vec![b'k', n]));
        steady.write_frame(ping).await.expect("ping");
        assert_eq!(next_pong_or_close(&mut steady).await, Ok(vec![b'k', n]), "ping {n}");
    }

    let mut flood = connect(&server, "").await;
    let sent = 400;
    for n in 0..sent {
        let ping = Frame::new(true, OpCode::Ping, None, Payload::Owned(vec![b'f', n as u8]));
        if flood.write_frame(ping).await.is_err() {
            break; // closed by the server meanwhile
        }
    }
    let mut pongs = 0;
    let code = loop {
        match next_pong_or_close(&mut flood).await {
            Ok(_) => pongs += 1,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(close::POLICY));
    // The burst (5 messages: 20 pings) and what the rate refilled meanwhile, not 400.
    assert!((20..60).contains(&pongs), "{pongs} pongs for {sent} pings");

    let pong = request(&mut bystander, json!({"op": "ping", "id": 1})).await;
    assert_eq!(pong["op"], "pong");

    // Pongs nobody asked for (no read receipt: the server's receipts carry positions it
    // queued) cost what pings do: a flood of them is closed with 1008 too, where every
    // one was taken before (one such client took a core).
    let mut flood = connect(&server, "").await;
    for n in 0..400u32 {
        let pong = Frame::new(true, OpCode::Pong, None, Payload::Owned(n.to_be_bytes().to_vec()));
        if flood.write_frame(pong).await.is_err() {
            break;
        }
    }
    let code = loop {
        if let Err(code) = next_pong_or_close(&mut flood).await {
            break code;
        }
    };
    assert_eq!(code, Some(close::POLICY));
    let pong = request(&mut bystander, json!({"op": "ping", "id": 2})).await;
    assert_eq!(pong["op"], "pong");
    server.shutdown().await.expect("clean shutdown");
}

/// Anonymous connections stop short of the limit: a flood of them never locks out a user
/// who brings a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_connections_are_kept_for_signed_in_users() {
    let server = start(|c| {
        c.ws.connections_max = 20;
        c.ws.reserved_for_users = 100; // at most a tenth of 20: 2
    })
    .await;
    let addr = server.local_addr();
    let mut anonymous = Vec::new();
    for _ in 0..18 {
        anonymous.push(connect(&server, "").await);
    }
    let upgrade = |query: &str| {
        format!(
            "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let (status, response) = http_raw(addr, &upgrade("")).await;
    assert_eq!(status, 503, "{response}");
    assert!(body_json(&response)["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("signed-in")));
    let alice = Api::login(addr, 0).await;
    let token = format!("?token={}", alice.token);
    let mut users = vec![connect(&server, &token).await, connect(&server, &token).await];
    let (status, response) = http_raw(addr, &upgrade(&token)).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (503, Some("too_many_connections"))
    );
    let ping = request(&mut users[0], serde_json::json!({"op": "ping", "id": 1})).await;
    assert_eq!(ping["op"], "pong");
    drop((anonymous, users));
    server.shutdown().await.expect("clean shutdown");
}

/// One user's connections are bounded, at the upgrade and by `auth`; a closed one frees
/// its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_a_bounded_number_of_connections() {
    let server = start(|c| c.ws.connections_per_user_max = 2).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let token = format!("?token={}", alice.token);
    let first = connect(&server, &token).await;
    let _second = connect(&server, &token).await;
    let upgrade = format!(
        "GET /ws{token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (status, response) = http_raw(addr, &upgrade).await;
    assert_eq!(status, 503, "{response}");
    assert!(body_json(&response)["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("per user")));
    // `auth` on a public connection: refused, and the connection stays public and open.
    let mut public = connect(&server, "").await;
    let refused =
        request(&mut public, serde_json::json!({"op": "auth", "id": 1, "token": alice.token}))
            .await;
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");
    let ping = request(&mut public, serde_json::json!({"op": "ping", "id": 2})).await;
    assert_eq!(ping["op"], "pong");
    // Another user has places of their own; a closed connection frees one.
    let _bobs = connect(&server, &format!("?token={}", bob.token)).await;
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let answer =
            request(&mut public, serde_json::json!({"op": "auth", "id": 3, "token": alice.token}))
                .await;
        if answer["op"] == "authenticated" {
            again = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the place of a closed connection was never freed");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_http_errors_are_json() {
    let server = start(|c| c.ws.connections_max = 2).await;
    let addr = server.local_addr();
    let a = connect(&server, "").await;
    let _b = connect(&server, "").await;
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (status, response) =
        http_raw(addr, &upgrade.replace("Connection: upgrade", "Connection: upgrade, close")).await;
    assert_eq!(status, 503, "{response}");
    assert_eq!(body_json(&response)["error"]["code"], "too_many_connections");
    assert_eq!(server.metrics().ws_rejected_total.load(Ordering::Relaxed), 1);
    drop(a);
    eventually(|| server.metrics().ws_connections.load(Ordering::Relaxed) < 2).await;
    let _c = connect(&server, "").await; // a slot freed up

    let get = |path: &str, method: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
    };
    let (status, response) = http_raw(addr, &get("/ws", "GET")).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (400, Some("not_websocket"))
    );
    let (status, response) = http_raw(
        addr,
        &get("/ws?format=xml", "GET")
            .replace("Connection: close", "Upgrade: websocket\r\nConnection: upgrade, close"),
    )
    .await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (400, Some("invalid_format"))
    );
    for query in ["interval_ms=1001", "interval_ms=-1", "interval_ms=soon"] {
        let (status, response) = http_raw(
            addr,
            &get(&format!("/ws?{query}"), "GET")
                .replace("Connection: close", "Upgrade: websocket\r\nConnection: upgrade, close"),
        )
        .await;
        assert_eq!(
            (status, body_json(&response)["error"]["code"].as_str()),
            (400, Some("invalid_interval")),
            "{query}"
        );
    }
    let (status, response) = http_raw(addr, &get("/nope", "GET")).await;
    assert_eq!((status, body_json(&response)["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _) = http_raw(addr, &get("/healthz", "POST")).await;
    assert_eq!(status, 405);
    let (status, response) = http_raw(addr, &get("/healthz", "GET")).await;
    assert_eq!((status, body_json(&response)["status"].as_str()), (200, Some("ok")));
    let (status, response) = http_raw(addr, &get("/metrics", "GET")).await;
    assert_eq!(status, 200);
    assert!(response.contains("tickgate_ws_rejected_total 1"), "{response}");
    // The read-receipt allowances' shared growth: nothing lent out, the pool's size.
    assert!(response.contains("\ntickgate_ws_unread_growth_bytes 0\n"), "{response}");
    let max = format!("\ntickgate_ws_unread_growth_max_bytes {}\n", 128 << 20);
    assert!(response.contains(&max), "{response}");
    server.shutdown().await.expect("clean shutdown");
}

/// RFC 6455 4.2.1: an opening handshake has a key of 16 bytes in base64, HTTP/1.1 and a
/// Host; 4.4: a refused one names the version the server speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flawed_handshakes_are_refused_with_the_version_the_server_speaks() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    for (what, from, to) in [
        ("empty key", good_key, "Sec-WebSocket-Key: "),
        ("key not 16 bytes", good_key, "Sec-WebSocket-Key: YWJj"),
        ("key not base64", good_key, "Sec-WebSocket-Key: not base64 at all!!"),
        ("no key", good_key, "X-Nothing: 1"),
        ("version 8", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
        ("HTTP/1.0", "HTTP/1.1", "HTTP/1.0"),
        ("no Host", &format!("Host: {addr}\r\n"), ""),
        ("two Hosts", &format!("Host: {addr}\r\n"), &format!("Host: {addr}\r\nHost: {addr}\r\n")),
        (
            "two keys",
            good_key,
            &format!("{good_key}\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="),
        ),
        (
            "two versions",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 12",
        ),
        (
            "two Origins",
            good_key,
            &format!("{good_key}\r\nOrigin: http://{addr}\r\nOrigin: http://evil.example"),
        ),
        (
            "two Authorizations",
            good_key,
            &format!("{good_key}\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b"),
        ),
    ] {
        let (status, response) = http_raw(addr, &upgrade.replacen(from, to, 1)).await;
        assert_eq!(
            (status, body_json(&response)["error"]["code"].as_str()),
            (400, Some("bad_handshake")),
            "{what}: {response}"
        );
        assert!(response.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{what}");
    }
    // A client without a flaw is upgraded, and nothing was left open.
    drop(connect(&server, "").await);
    eventually(|| server.metrics().ws_connections.load(Ordering::Relaxed) == 0).await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_and_slow_handshakes_are_cut() {
    let server = start(|c| {
        c.ws.ping_interval = Duration::from_millis(100);
        c.ws.pong_timeout = Duration::from_millis(200);
        c.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    // A client that never answers pings (it does not read, so it cannot pong).
    let mut silent = client::connect(server.local_addr(), "/ws").await.expect("connects");
    silent.set_auto_pong(false);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(expect_close(&mut silent).await, Some(close::HEARTBEAT_TIMEOUT));
    assert_eq!(server.metrics().ws_heartbeat_closes_total.load(Ordering::Relaxed), 1);

    // A client that answers pings stays.
    let mut lively = connect(&server, "").await;
    // It keeps reading (answering pings automatically) through application pings; reads are
    // never cancelled midway, as fastwebsockets' read_frame is not cancel-safe.
    let until = tokio::time::Instant::now() + Duration::from_millis(800);
    while tokio::time::Instant::now() < until {
        let pong = request(&mut lively, json!({"op": "ping", "id": 1})).await;
        assert_eq!(pong["op"], "pong");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A client that sends a frame a byte at a time and never finishes it is silent too:
    // only whole frames show a client alive (a byte every half second held one open).
    let code = dribbled_frame_closes(server.local_addr()).await;
    assert_eq!(code, Some(close::HEARTBEAT_TIMEOUT));

    // A TCP connection that never sends its request head is dropped.
    let (status, response) = http_raw(server.local_addr(), "GET /healthz HTTP/1.1\r\n").await;
    assert!(status == 0 || status == 408, "dropped or 408, got {status}: {response}");
    server.shutdown().await.expect("clean shutdown");
}

/// Upgrades a raw connection, starts a 1,000-byte text frame and sends its payload a byte
/// every 20 ms; the close code the server ends it with (`None`: ended without one).
async fn dribbled_frame_closes(addr: std::net::SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("upgrade request");
    // Masked (an all-zero key), 126: a 16-bit length follows.
    s.write_all(&[0x81, 0x80 | 126, 0x03, 0xe8, 0, 0, 0, 0]).await.expect("frame header");
    let mut got = Vec::new();
    let dribble = async {
        loop {
            if s.write_all(b"a").await.is_err() {
                return None;
            }
            let mut chunk = [0u8; 1024];
            match tokio::time::timeout(Duration::from_millis(20), s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Err(_) => continue,
            }
            if let Some(code) = server_close_code(&got) {
                return Some(code);
            }
        }
    };
    tokio::time::timeout(WAIT, dribble).await.expect("closed in time")
}

/// The code of the close frame among what the server sent after its `101` head, if one
/// came whole (server frames are unmasked).
fn server_close_code(bytes: &[u8]) -> Option<u16> {
    let start = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut rest = &bytes[start..];
    while rest.len() >= 2 {
        let (opcode, len7) = (rest[0] & 0x0f, usize::from(rest[1] & 0x7f));
        let (len, header) = match len7 {
            126 => (usize::from(u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?])), 4),
            127 => return None, // no server frame here is that long
            n => (n, 2),
        };
        let payload = rest.get(header..header + len)?;
        if opcode == 0x8 && payload.len() >= 2 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        rest = &rest[header + len..];
    }
    None
}

/// Several requests in one TCP segment, with answers larger than the reply budget: parsing
/// stops after the first answer, and the rest must still be answered once it is written,
/// without waiting for the client to send anything more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_left_at_the_reply_budget_are_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(|c| c.ws.write_batch_bytes_max = 64).await;
    let mut s = tokio::net::TcpStream::connect(server.local_addr()).await.expect("connect");
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.local_addr()
    );
    s.write_all(head.as_bytes()).await.expect("upgrade request");
    // Three pings in one write: masked text frames with an all-zero mask key.
    let mut burst = Vec::new();
    for id in 1..=3 {
        let text = format!(r#"{{"op":"ping","id":{id}}}"#);
        burst.extend_from_slice(&[0x81, 0x80 | text.len() as u8, 0, 0, 0, 0]);
        burst.extend_from_slice(text.as_bytes());
    }
    s.write_all(&burst).await.expect("requests");
    // Read the 101 response, the welcome and the three pongs (server frames: unmasked,
    // short text).
    let mut buf = Vec::new();
    let mut pongs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pongs.len() < 3 {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("answers in time; got {pongs:?}"))
            .expect("read");
        assert!(n > 0, "connection open");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.starts_with(b"HTTP/1.1 101") {
                buf.drain(..end + 4);
            }
        }
        while buf.len() >= 2 && !buf.starts_with(b"HTTP") {
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                126 => break,
                n => (usize::from(n), 2),
            };
            if buf.len() < at + len {
                break;
            }
            let text = String::from_utf8_lossy(&buf[at..at + len]).into_owned();
            if text.contains(r#""op":"pong""#) {
                pongs.push(text);
            }
            buf.drain(..at + len);
        }
    }
    for (n, pong) in pongs.iter().enumerate() {
        assert!(pong.contains(&format!(r#""id":{}"#, n + 1)), "in order: {pong}");
    }
    server.shutdown().await.expect("clean shutdown");
}
