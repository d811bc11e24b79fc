//! Order entry over real HTTP: place, fill against another user, query, cancel, idempotent
//! retries, isolation between users, rejections, and fill pagination under new fills.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_fill_between_users_and_everything_agrees() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);

    let (status, ask) = alice.order(json!({"symbol": "BTC-USD", "side": "sell", "type": "limit", "price": "65000.00", "qty": "0.5000", "client_order_id": 7})).await;
    assert_eq!(status, 201, "{ask}");
    assert_eq!(
        (ask["status"].as_str(), ask["open_qty"].as_str(), ask["client_order_id"].as_u64()),
        (Some("open"), Some("0.5000"), Some(7))
    );
    assert_eq!(alice.balance("BTC").await["held"], "0.50000000");

    let (status, bid) = bob.order(json!({"symbol": "BTC-USD", "side": "buy", "type": "ioc", "price": "65100.00", "qty": "0.2000"})).await;
    assert_eq!(status, 201, "{bid}");
    let ask_id = ask["id"].as_u64().unwrap();
    eventually_async(|| async {
        alice.call("GET", &format!("/api/v1/orders/{ask_id}"), None, "").await.1["filled_qty"]
            == "0.2000"
    })
    .await;
    let (_, ask_now) = alice.call("GET", &format!("/api/v1/orders/{ask_id}"), None, "").await;
    assert_eq!(
        (ask_now["status"].as_str(), ask_now["open_qty"].as_str()),
        (Some("open"), Some("0.3000"))
    );

    // 0.2 BTC at the maker's 65000.00 = 13000 USD moved, no money created.
    assert_eq!(alice.balance("USD").await["total"], "1013000.000000");
    assert_eq!(bob.balance("USD").await["total"], "987000.000000");
    assert_eq!(bob.balance("BTC").await["total"], "1000.20000000");
    assert_eq!(bob.balance("USD").await["held"], "0.000000", "IOC remainder released its hold");
    let (_, fills) = alice.call("GET", "/api/v1/fills", None, "").await;
    assert_eq!(fills["fills"][0]["qty"], "0.2000");
    assert_eq!(fills["fills"][0]["price"], "65000.00");
    let (_, positions) = bob.call("GET", "/api/v1/positions", None, "").await;
    assert_eq!(positions["positions"], json!([{"symbol": "BTC-USD", "qty": "0.2000"}]));

    // Bob can neither see nor cancel Alice's order.
    let (status, body) = bob.call("GET", &format!("/api/v1/orders/{ask_id}"), None, "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_order")));
    let (status, _) = bob.call("DELETE", &format!("/api/v1/orders/{ask_id}"), None, "").await;
    assert_eq!(status, 404);

    // Alice cancels; a second cancel finds it closed; the hold is gone.
    let (status, canceled) =
        alice.call("DELETE", &format!("/api/v1/orders/{ask_id}"), None, "").await;
    assert_eq!(
        (status, canceled["status"].as_str(), canceled["reason"].as_str()),
        (200, Some("canceled"), Some("user_canceled"))
    );
    let (status, body) = alice.call("DELETE", &format!("/api/v1/orders/{ask_id}"), None, "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("order_closed")));
    assert_eq!(alice.balance("BTC").await["held"], "0.00000000");
    let (_, open) = alice.call("GET", "/api/v1/orders?status=open", None, "").await;
    assert_eq!(open["orders"], json!([]));
    let (_, closed) =
        alice.call("GET", "/api/v1/orders?status=closed&symbol=BTC-USD", None, "").await;
    assert_eq!(closed["orders"].as_array().map(Vec::len), Some(1));
    server.shutdown().await.expect("clean shutdown");
}

async fn eventually_async<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_and_rejections() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;
    let order = json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "3000.00", "qty": "1.000"});
    let (s1, first) =
        alice.call("POST", "/api/v1/orders", Some(order.clone()), "Idempotency-Key: k-1\r\n").await;
    let (s2, again) =
        alice.call("POST", "/api/v1/orders", Some(order.clone()), "Idempotency-Key: k-1\r\n").await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first["id"], again["id"], "a retry returns the original order");
    let (s3, other) = alice.call("POST", "/api/v1/orders", Some(json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "3000.00", "qty": "2.000"})), "Idempotency-Key: k-1\r\n").await;
    assert_eq!((s3, other["error"]["code"].as_str()), (422, Some("idempotency_key_reused")));
    let (_, open) = alice.call("GET", "/api/v1/orders?status=open", None, "").await;
    assert_eq!(open["orders"].as_array().map(Vec::len), Some(1), "exactly one order exists");

    for (body, status, code) in [
        (
            json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "3000.00", "qty": "100000.000"}),
            422,
            "insufficient_funds",
        ),
        (
            // A decimal this instrument cannot hold: well-formed, refused by the instrument.
            json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "3000.001", "qty": "1.000"}),
            422,
            "invalid_price",
        ),
        (
            json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "3,000", "qty": "1.000"}),
            400,
            "invalid_parameter",
        ),
        (
            json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "qty": "1.000"}),
            400,
            "invalid_parameter",
        ),
        (
            json!({"symbol": "ETH-USD", "side": "up", "type": "limit", "price": "1.00", "qty": "1.000"}),
            400,
            "invalid_parameter",
        ),
        (
            json!({"symbol": "ETH-USD", "side": "buy", "type": "post_only", "price": "0.00", "qty": "1.000"}),
            422,
            "price_out_of_band",
        ),
        (
            json!({"symbol": "NOPE", "side": "buy", "type": "limit", "price": "1.00", "qty": "1.000"}),
            422,
            "unknown_symbol",
        ),
        (json!({"symbol": "ETH-USD"}), 400, "malformed"),
    ] {
        let (got, answer) = alice.order(body.clone()).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body}");
        // An order the engine refused has an id, listed as `rejected`: the answer names
        // it. One refused before it reached the engine has none.
        match answer["error"]["order_id"].as_u64() {
            Some(id) => {
                let (got, listed) =
                    alice.call("GET", &format!("/api/v1/orders/{id}"), None, "").await;
                assert_eq!((got, listed["status"].as_str()), (200, Some("rejected")), "{listed}");
                assert_eq!(listed["reason"].as_str(), Some(code), "{listed}");
            }
            None => assert_ne!(code, "insufficient_funds", "the engine refused it: {answer}"),
        }
    }
    let anonymous = Api { addr, token: "nope".into() };
    let (status, _) = anonymous.order(order).await;
    assert_eq!(status, 401);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_pages_never_repeat_or_skip_while_fills_arrive() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let trade = |n: usize| {
        let (alice, bob) = (&alice, &bob);
        async move {
            for _ in 0..n {
                let (s, _) = alice.order(json!({"symbol": "SOL-USD", "side": "sell", "type": "limit", "price": "150.00", "qty": "1.00"})).await;
                assert_eq!(s, 201);
                let (s, _) = bob.order(json!({"symbol": "SOL-USD", "side": "buy", "type": "ioc", "price": "150.00", "qty": "1.00"})).await;
                assert_eq!(s, 201);
            }
        }
    };
    trade(10).await;
    eventually_async(|| async {
        alice.call("GET", "/api/v1/fills?limit=1000", None, "").await.1["fills"]
            .as_array()
            .map(Vec::len)
            == Some(10)
    })
    .await;
    let (_, all) = alice.call("GET", "/api/v1/fills?limit=1000", None, "").await;
    let original: Vec<u64> =
        all["fills"].as_array().unwrap().iter().map(|f| f["id"].as_u64().unwrap()).collect();

    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/api/v1/fills?limit=3&cursor={c}"),
            None => "/api/v1/fills?limit=3".to_string(),
        };
        let (_, page) = alice.call("GET", &path, None, "").await;
        seen.extend(page["fills"].as_array().unwrap().iter().map(|f| f["id"].as_u64().unwrap()));
        trade(1).await; // new fills land while we page
        match page["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "strictly newest first: {seen:?}");
    assert_eq!(seen, original, "every fill exactly once, none of the new ones mixed in");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_over_rest() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let (status, placed) = alice.order(json!({"symbol": "SOL-USD", "side": "buy", "type": "limit", "price": "140.00", "qty": "10.00"})).await;
    assert_eq!(status, 201, "{placed}");
    let path = format!("/api/v1/orders/{}", placed["id"]);
    let (status, smaller) = alice.call("PATCH", &path, Some(json!({"qty": "4.00"})), "").await;
    assert_eq!((status, smaller["open_qty"].as_str()), (200, Some("4.00")), "{smaller}");
    let (status, moved) =
        alice.call("PATCH", &path, Some(json!({"price": "141.50", "qty": "5.00"})), "").await;
    assert_eq!(
        (status, moved["price"].as_str(), moved["open_qty"].as_str()),
        (200, Some("141.50"), Some("5.00"))
    );
    assert_eq!(alice.call("PATCH", &path, Some(json!({})), "").await.0, 400);
    let (status, same) = alice.call("PATCH", &path, Some(json!({"qty": "5.00"})), "").await;
    assert_eq!((status, same["error"]["code"].as_str()), (422, Some("no_change")), "{same}");
    assert_eq!(bob.call("PATCH", &path, Some(json!({"qty": "1.00"})), "").await.0, 404);
    assert_eq!(alice.call("DELETE", &path, None, "").await.0, 200);
    let (status, closed) = alice.call("PATCH", &path, Some(json!({"qty": "1.00"})), "").await;
    assert_eq!((status, closed["error"]["code"].as_str()), (409, Some("order_closed")));
}

/// An account's open orders are bounded; a keyed retry still answers its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_orders_are_bounded_per_account() {
    let server = start(|c| c.open_orders_max = 3).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let bid = |price: &str| json!({"symbol": "BTC-USD", "side": "buy", "type": "limit", "price": price, "qty": "0.0010"});
    let (status, first) = alice
        .call("POST", "/api/v1/orders", Some(bid("1000.00")), "Idempotency-Key: cap-1\r\n")
        .await;
    assert_eq!(status, 201, "{first}");
    for price in ["1001.00", "1002.00"] {
        assert_eq!(alice.order(bid(price)).await.0, 201);
    }
    let (status, refused) = alice.order(bid("1003.00")).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("limit_exceeded")),
        "{refused}"
    );
    // The retry of an order placed before is its answer, not a refusal.
    let (status, again) = alice
        .call("POST", "/api/v1/orders", Some(bid("1000.00")), "Idempotency-Key: cap-1\r\n")
        .await;
    assert_eq!((status, &again["id"]), (201, &first["id"]), "{again}");
    // A key refused for the bound is free for a later attempt.
    let (status, _) = alice
        .call("POST", "/api/v1/orders", Some(bid("1004.00")), "Idempotency-Key: cap-2\r\n")
        .await;
    assert_eq!(status, 422);
    assert_eq!(bob.order(bid("1003.00")).await.0, 201, "another account has its own bound");
    assert_eq!(
        alice.call("DELETE", &format!("/api/v1/orders/{}", first["id"]), None, "").await.0,
        200
    );
    let (status, placed) = alice
        .call("POST", "/api/v1/orders", Some(bid("1004.00")), "Idempotency-Key: cap-2\r\n")
        .await;
    assert_eq!(status, 201, "{placed}");
    // Orders sent at once do not all pass on the same count (30 open with a bound of 5
    // before): bob has one open, so 2 of 12 get in.
    let sent = (0..12).map(|n| bob.order(bid(&format!("{}.00", 900 + n))));
    let answers = futures_util::future::join_all(sent).await;
    let placed = answers.iter().filter(|(status, _)| *status == 201).count();
    let refused = answers.iter().filter(|(_, a)| a["error"]["code"] == "limit_exceeded").count();
    assert_eq!((placed, refused), (2, 10), "{answers:?}");
    let (_, open) = bob.call("GET", "/api/v1/orders?status=open", None, "").await;
    assert_eq!(open["orders"].as_array().map(Vec::len), Some(3), "{open}");
    server.shutdown().await.expect("clean shutdown");
}

/// A replace's quantity never adds back what has filled: `qty` counts from the fills the
/// server knows, `total_qty` is the order's whole quantity, and a total at or below what
/// has filled ends the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_after_fills_counts_them() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let usd_before = alice.balance("USD").await["held"].clone();
    let (status, placed) = alice.order(json!({"symbol": "SOL-USD", "side": "buy", "type": "limit", "price": "140.00", "qty": "10.00"})).await;
    assert_eq!(status, 201, "{placed}");
    let path = format!("/api/v1/orders/{}", placed["id"]);
    let (status, taker) = bob.order(json!({"symbol": "SOL-USD", "side": "sell", "type": "ioc", "price": "140.00", "qty": "3.00"})).await;
    assert_eq!((status, taker["filled_qty"].as_str()), (201, Some("3.00")), "{taker}");
    eventually_async(|| async {
        alice.call("GET", &path, None, "").await.1["filled_qty"] == "3.00"
    })
    .await;
    let open_filled = |v: &serde_json::Value| {
        (v["open_qty"].as_str().map(String::from), v["filled_qty"].as_str().map(String::from))
    };
    let some = |a: &str, b: &str| (Some(a.to_string()), Some(b.to_string()));
    // 5 in all, 3 filled: 2 stay open.
    let (status, total) = alice.call("PATCH", &path, Some(json!({"total_qty": "5.00"})), "").await;
    assert_eq!((status, open_filled(&total)), (200, some("2.00", "3.00")), "{total}");
    // An open quantity is what stays open.
    let (status, open) = alice.call("PATCH", &path, Some(json!({"qty": "4.00"})), "").await;
    assert_eq!((status, open_filled(&open)), (200, some("4.00", "3.00")), "{open}");
    // A new price alone keeps the total.
    let (status, moved) = alice.call("PATCH", &path, Some(json!({"price": "139.00"})), "").await;
    assert_eq!((status, moved["price"].as_str()), (200, Some("139.00")), "{moved}");
    assert_eq!(open_filled(&moved), some("4.00", "3.00"));
    // Both quantities, or an open quantity of zero: refused, nothing changes.
    let (status, both) =
        alice.call("PATCH", &path, Some(json!({"qty": "1.00", "total_qty": "5.00"})), "").await;
    assert_eq!(
        (status, both["error"]["code"].as_str()),
        (400, Some("invalid_parameter")),
        "{both}"
    );
    let (status, zero) = alice.call("PATCH", &path, Some(json!({"qty": "0"})), "").await;
    assert_eq!((status, zero["error"]["code"].as_str()), (422, Some("non_positive_qty")), "{zero}");
    assert_eq!(open_filled(&alice.call("GET", &path, None, "").await.1), some("4.00", "3.00"));
    // A total at or below what has filled: the order ends, its hold released.
    let (status, ended) = alice.call("PATCH", &path, Some(json!({"total_qty": "3.00"})), "").await;
    assert_eq!(
        (status, ended["status"].as_str(), ended["reason"].as_str()),
        (200, Some("canceled"), Some("user_canceled")),
        "{ended}"
    );
    assert_eq!(open_filled(&ended), some("0.00", "3.00"));
    assert_eq!(alice.balance("USD").await["held"], usd_before);
    let (status, closed) = alice.call("PATCH", &path, Some(json!({"qty": "1.00"})), "").await;
    assert_eq!((status, closed["error"]["code"].as_str()), (409, Some("order_closed")));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_rate_limit_answers_429_with_retry_after() {
    let server = start(|c| {
        c.rest_rate = 2;
        c.rest_burst = 5;
    })
    .await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    for _ in 0..5 {
        assert_eq!(alice.call("GET", "/api/v1/positions", None, "").await.0, 200);
    }
    let head = format!(
        "GET /api/v1/positions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
        alice.token
    );
    let (status, response) = http_raw(addr, &head).await;
    assert_eq!(status, 429, "{response}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
    assert_eq!(body_json(&response)["error"]["code"], "rate_limited");
    // Order requests over WebSocket draw on the same budget: another socket, or several,
    // do not get the user more.
    let mut ws = connect(&server, &format!("?token={}", alice.token)).await;
    let order = json!({"op": "order.new", "id": 1, "symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1000.00", "qty": "0.0010"});
    let refused = request(&mut ws, order).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{refused}"
    );
    // Cancels are never refused for the rate: a user who spent it can still take risk off.
    let kill = request(&mut ws, json!({"op": "order.cancel_all", "id": 2})).await;
    assert_eq!(kill["op"], "order.canceled_all", "{kill}");
    assert_eq!(alice.call("DELETE", "/api/v1/orders", None, "").await.0, 200);
    assert_eq!(alice.call("DELETE", "/api/v1/orders/999999", None, "").await.0, 404);
    // Another user has a bucket of their own; the public API is not per-user limited.
    assert_eq!(bob.call("GET", "/api/v1/positions", None, "").await.0, 200);
    assert_eq!(alice.call("GET", "/api/v1/instruments", None, "").await.0, 200);
    // The bucket refills.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(alice.call("GET", "/api/v1/positions", None, "").await.0, 200);
}

/// Market, IOC, FOK and crossing limit orders that trade at several levels: every answer
/// is the order as its whole command left it (it equals what a read right after says,
/// since nothing else touches it), never a status the command already left behind; a
/// keyed retry answers the same final view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_answer_is_the_engines_whole_verdict() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    // Bob's book: 0.100 at each of 60 prices per side, so each taker below fills at
    // several levels (several reports in one command).
    for level in 0..60 {
        for (side, price) in [("sell", 3000 + level), ("buy", 2999 - level)] {
            let body = json!({"symbol": "ETH-USD", "side": side, "type": "limit", "price": format!("{price}.00"), "qty": "0.100"});
            let (status, answer) = bob.order(body).await;
            assert_eq!(status, 201, "{answer}");
        }
    }
    let mut checked = 0;
    for n in 0..48u32 {
        let side = if n % 2 == 0 { "buy" } else { "sell" };
        let (far, near) =
            if side == "buy" { ("3100.00", "3000.00") } else { ("2900.00", "2999.00") };
        let kind = ["market", "ioc", "fok", "limit"][(n / 2 % 4) as usize];
        // 0.250: three levels; a FOK at the near price cannot fill and is rejected.
        let price = if kind == "fok" && n % 3 == 0 { near } else { far };
        let mut body = json!({"symbol": "ETH-USD", "side": side, "type": kind, "price": price, "qty": "0.250"});
        if kind == "market" {
            // A market order takes no price: one sent is refused, not ignored.
            let (status, refused) = alice.order(body.clone()).await;
            assert_eq!(
                (status, refused["error"]["code"].as_str()),
                (400, Some("invalid_parameter"))
            );
            body.as_object_mut().expect("object").remove("price");
        }
        let key = format!("Idempotency-Key: verdict-{n}\r\n");
        let (status, answer) = alice.call("POST", "/api/v1/orders", Some(body.clone()), &key).await;
        if status == 422 {
            assert_eq!((kind, answer["error"]["code"].as_str()), ("fok", Some("fok_unfillable")));
            continue;
        }
        assert_eq!(status, 201, "{answer}");
        if kind != "limit" {
            assert_ne!(answer["status"], "open", "{kind} answered open: {answer}");
        }
        assert_eq!(answer["filled_qty"], "0.250", "{kind} {answer}");
        assert_eq!(answer["status"], "filled", "{kind} {answer}");
        let path = format!("/api/v1/orders/{}", answer["id"]);
        let (_, read) = alice.call("GET", &path, None, "").await;
        assert_eq!(answer, read, "the answer is the order as it stands");
        let (_, retried) = alice.call("POST", "/api/v1/orders", Some(body), &key).await;
        assert_eq!(retried, read, "a retry answers the final view");
        assert!(answer["seq"].as_u64().is_some_and(|s| s > 0), "{answer}");
        assert_eq!(answer["price"].is_null(), kind == "market", "a market order has no price");
        checked += 1;
    }
    assert!(checked >= 40, "{checked}");

    // A refused replace leaves the order open with its quantity, and says so.
    let (_, resting) = alice.order(json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "2000.00", "qty": "0.005"})).await;
    let path = format!("/api/v1/orders/{}", resting["id"]);
    let (status, refused) = alice.call("PATCH", &path, Some(json!({"qty": "0.005"})), "").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (422, Some("no_change")));
    let (_, read) = alice.call("GET", &path, None, "").await;
    assert_eq!((read["status"].as_str(), read["open_qty"].as_str()), (Some("open"), Some("0.005")));
    // A rejected order is listed without the invalid price it was refused for.
    let bad = json!({"symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "-5.00", "qty": "0.005"});
    let (status, _) = alice.order(bad).await;
    assert_eq!(status, 422);
    let (_, closed) = alice.call("GET", "/api/v1/orders?status=closed&limit=1", None, "").await;
    let listed = &closed["orders"][0];
    assert_eq!(
        (listed["status"].as_str(), listed["price"].is_null()),
        (Some("rejected"), true),
        "{listed}"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_all_cancels_the_callers_open_orders_of_one_market_or_all() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let mut ids = Vec::new();
    for (symbol, price, qty) in [
        ("BTC-USD", "70000.00", "0.1000"),
        ("BTC-USD", "70001.00", "0.1000"),
        ("ETH-USD", "4000.00", "1.0000"),
        ("BTC-USD", "70002.00", "0.1000"),
    ] {
        let (status, o) = alice
            .order(json!({"symbol": symbol, "side": "sell", "type": "limit", "price": price, "qty": qty}))
            .await;
        assert_eq!(status, 201, "{o}");
        ids.push(o["id"].as_u64().unwrap());
    }
    let (status, bobs) = bob
        .order(json!({"symbol": "BTC-USD", "side": "sell", "type": "limit", "price": "70003.00", "qty": "0.1000"}))
        .await;
    assert_eq!(status, 201, "{bobs}");

    let (status, body) = alice.call("DELETE", "/api/v1/orders?symbol=NOPE-USD", None, "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_symbol")), "{body}");
    let (status, _) = http_raw(
        addr,
        &format!("DELETE /api/v1/orders HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 401);

    // BTC only: alice's three, newest first, each canceled by its owner; ETH and bob's stay.
    let (status, body) = alice.call("DELETE", "/api/v1/orders?symbol=BTC-USD", None, "").await;
    assert_eq!(status, 200, "{body}");
    let canceled: Vec<_> = body["canceled"].as_array().unwrap().iter().collect();
    let canceled_ids: Vec<_> = canceled.iter().map(|o| o["id"].as_u64().unwrap()).collect();
    assert_eq!(canceled_ids, vec![ids[3], ids[1], ids[0]], "{body}");
    assert!(canceled.iter().all(|o| o["status"] == "canceled" && o["reason"] == "user_canceled"));
    assert_eq!(body["not_canceled"], json!([]));
    assert_eq!(alice.balance("BTC").await["held"], "0.00000000");
    let (_, open) = alice.call("GET", "/api/v1/orders?status=open", None, "").await;
    let open: Vec<_> =
        open["orders"].as_array().unwrap().iter().map(|o| o["id"].as_u64()).collect();
    assert_eq!(open, vec![Some(ids[2])]);

    // Everything: the ETH order; then nothing is left, which is not an error.
    let (status, body) = alice.call("DELETE", "/api/v1/orders", None, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["canceled"][0]["id"].as_u64(), Some(ids[2]), "{body}");
    assert_eq!(body["canceled"].as_array().map(Vec::len), Some(1));
    assert_eq!(alice.balance("ETH").await["held"], "0.00000000");
    let (status, body) = alice.call("DELETE", "/api/v1/orders", None, "").await;
    assert_eq!((status, body), (200, json!({"canceled": [], "not_canceled": []})));

    let (_, bob_open) = bob.call("GET", "/api/v1/orders?status=open", None, "").await;
    assert_eq!(bob_open["orders"][0]["id"], bobs["id"], "another user's order is untouched");
    server.shutdown().await.expect("clean shutdown");
}

/// The demo funding of a first start waits out a full engine queue: it happens once, so a
/// transfer dropped there would never come (accounts were left empty or half funded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_funds_every_account_even_through_a_tiny_queue() {
    let server = start(|c| c.queue_capacity = 2).await;
    let addr = server.local_addr();
    for user in 0..2 {
        let api = Api::login(addr, user).await;
        let usd = api.balance("USD").await;
        assert_eq!(usd["available"], "1000000.000000", "user {user}: {usd}");
        let eth = api.balance("ETH").await;
        assert_eq!(eth["available"], "1000.00000000", "user {user}: {eth}");
    }
    server.shutdown().await.expect("clean shutdown");
}
