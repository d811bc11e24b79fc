//! Public market data over real HTTP: instruments, the book (joinable with WebSocket deltas
//! by its sequence), recent trades, cache validation, and errors as JSON.

mod common;

use common::*;
use serde_json::json;
use tickgate_engine::*;
use tickgate_gateway::client::Message;
use tickgate_gateway::protocol::{self, MsgType};

fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n")
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instruments_book_and_trades_agree_with_the_engine_and_the_websocket_stream() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let engine = server.engine().clone();
    fund(&engine);
    let eth = symbol_id(&engine, "ETH-USD");
    order(&engine, 1, eth, Side::Sell, OrderType::Limit, 350_010, 2_000);
    order(&engine, 1, eth, Side::Sell, OrderType::Limit, 350_020, 500);
    order(&engine, 2, eth, Side::Buy, OrderType::Limit, 349_990, 1_500);
    order(&engine, 2, eth, Side::Buy, OrderType::Ioc, 350_010, 250);
    let expected = engine.book_snapshot(eth, 10).expect("engine answers");
    eventually(|| {
        server.directory().get("book.ETH-USD").map(|c| c.last_seq()) == Some(expected.seq.0)
    })
    .await;

    let (status, response) = http_raw(addr, &get(addr, "/api/v1/instruments", "")).await;
    assert_eq!(status, 200, "{response}");
    let list = body_json(&response);
    let eth_json = list["instruments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["symbol"] == "ETH-USD")
        .cloned()
        .unwrap();
    assert_eq!(
        (eth_json["price_precision"].as_u64(), eth_json["tick_size"].as_str()),
        (Some(2), Some("0.01"))
    );
    assert!(header(&response, "cache-control").is_some_and(|v| v.contains("max-age")));
    // Every channel listed is one the WebSocket takes, candles included.
    let channels = eth_json["channels"].clone();
    assert!(channels.as_array().is_some_and(|c| c.contains(&json!("candles.ETH-USD.1m"))));
    let mut listed = connect(&server, "?format=json").await;
    let ack = request(&mut listed, json!({"op": "subscribe", "id": 9, "channels": channels})).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    assert_eq!(ack["channels"].as_array().map(Vec::len), channels.as_array().map(Vec::len));

    let (status, response) =
        http_raw(addr, &get(addr, "/api/v1/markets/ETH-USD/book?depth=10", "")).await;
    assert_eq!(status, 200, "{response}");
    let book = body_json(&response);
    assert_eq!(
        book["seq"].as_u64(),
        Some(expected.seq.0),
        "the book carries the WebSocket book sequence"
    );
    assert_eq!(book["asks"], json!([["3500.10", "1.750"], ["3500.20", "0.500"]]));
    assert_eq!(book["bids"], json!([["3499.90", "1.500"]]));
    // Revalidation: same sequence, 304 with no body.
    let etag = header(&response, "etag").expect("etag").to_string();
    let (status, not_modified) = http_raw(
        addr,
        &get(addr, "/api/v1/markets/ETH-USD/book?depth=10", &format!("If-None-Match: {etag}\r\n")),
    )
    .await;
    assert_eq!(status, 304, "{not_modified}");

    let (status, response) =
        http_raw(addr, &get(addr, "/api/v1/markets/ETH-USD/trades?limit=5", "")).await;
    assert_eq!(status, 200);
    let trades = body_json(&response);
    assert_eq!(
        trades["trades"],
        json!([{"seq": 1, "ts": trades["trades"][0]["ts"], "price": "3500.10", "qty": "0.250", "taker_side": "buy"}])
    );

    // The book moves: the old ETag no longer matches, and a WebSocket subscriber starting
    // now gets a snapshot at the same sequence as REST.
    order(&engine, 2, eth, Side::Buy, OrderType::Limit, 349_980, 100);
    let moved = engine.book_snapshot(eth, 10).expect("engine").seq.0;
    eventually(|| server.directory().get("book.ETH-USD").map(|c| c.last_seq()) == Some(moved))
        .await;
    let (status, response) = http_raw(
        addr,
        &get(addr, "/api/v1/markets/ETH-USD/book?depth=10", &format!("If-None-Match: {etag}\r\n")),
    )
    .await;
    assert_eq!(status, 200);
    let rest_seq = body_json(&response)["seq"].as_u64();
    let mut ws = connect(&server, "").await;
    request(&mut ws, json!({"op": "subscribe", "channels": ["book.ETH-USD"], "depth": 10})).await;
    let Message::Binary(snapshot) = next(&mut ws).await else { panic!("snapshot") };
    let msg = protocol::decode(&snapshot).next().expect("one message").expect("valid");
    assert_eq!((msg.msg_type, Some(msg.seq)), (MsgType::BookSnapshot, rest_seq));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_market_data_requests_get_json_errors() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    for (path, status, code) in [
        ("/api/v1/markets/NOPE-USD/book", 404, "unknown_symbol"),
        ("/api/v1/markets/NOPE-USD/trades", 404, "unknown_symbol"),
        ("/api/v1/markets/BTC-USD/book?depth=0", 400, "invalid_parameter"),
        ("/api/v1/markets/BTC-USD/book?depth=abc", 400, "invalid_parameter"),
        ("/api/v1/markets/BTC-USD/trades?limit=100000", 400, "invalid_parameter"),
        ("/api/v1/markets/BTC-USD", 404, "not_found"),
        ("/api/v1/nothing", 404, "not_found"),
        // A reserved character stays encoded: no instrument has that name.
        ("/api/v1/markets/BTC%2FUSD/book", 404, "unknown_symbol"),
    ] {
        let (got, response) = http_raw(addr, &get(addr, path, "")).await;
        assert_eq!(got, status, "{path}: {response}");
        assert_eq!(body_json(&response)["error"]["code"], code, "{path}");
    }
    // Percent-encoded unreserved characters name the same resource (RFC 3986 6.2.2.2).
    for path in ["/api/v1/markets/BTC%2dUSD/book?depth=%35", "/api/v1/%69nstruments"] {
        let (got, response) = http_raw(addr, &get(addr, path, "")).await;
        assert_eq!(got, 200, "{path}: {response}");
    }
    let (got, response) = http_raw(addr, &get(addr, "/api/v1/alerts/%73tream", "")).await;
    assert_eq!(
        (got, body_json(&response)["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "the alert stream, not an alert: {response}"
    );
    let post = format!("POST /api/v1/instruments HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let (status, response) = http_raw(addr, &post).await;
    assert_eq!(
        (status, body_json(&response)["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    server.shutdown().await.expect("clean shutdown");
}

/// Candles come from trades: two trades between users make one 1 s, 1 m, 5 m and 1 h
/// candle each, with the trades' open, high, low, close and volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_are_computed_from_trades() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    for (price, qty) in [("3000.00", "1.000"), ("3010.00", "2.000")] {
        let ask = serde_json::json!({"symbol": "ETH-USD", "side": "sell", "type": "limit", "price": price, "qty": qty});
        assert_eq!(alice.order(ask).await.0, 201);
        let bid = serde_json::json!({"symbol": "ETH-USD", "side": "buy", "type": "ioc", "price": price, "qty": qty});
        assert_eq!(bob.order(bid).await.0, 201);
    }
    for interval in ["1s", "1m", "5m", "1h"] {
        let path = format!("/api/v1/markets/ETH-USD/candles?interval={interval}");
        let mut body = serde_json::Value::Null;
        for _ in 0..200 {
            body = alice.call("GET", &path, None, "").await.1;
            let trades: u64 = body["candles"]
                .as_array()
                .map_or(0, |c| c.iter().map(|c| c["trades"].as_u64().unwrap_or(0)).sum());
            if trades == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let last = body["candles"].as_array().and_then(|c| c.last()).cloned().unwrap_or_default();
        if interval != "1s" {
            // Both trades fall in one candle unless they straddle an interval's start.
            assert_eq!(body["candles"].as_array().map(Vec::len), Some(1), "{interval}: {body}");
            assert_eq!(
                (
                    last["open"].as_str(),
                    last["high"].as_str(),
                    last["low"].as_str(),
                    last["close"].as_str(),
                    last["volume"].as_str()
                ),
                (Some("3000.00"), Some("3010.00"), Some("3000.00"), Some("3010.00"), Some("3.000")),
                "{interval}: {body}"
            );
        }
    }
    let (status, body) =
        alice.call("GET", "/api/v1/markets/ETH-USD/candles?interval=2m", None, "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_parameter")));
    server.shutdown().await.expect("clean shutdown");
}
