//! Order entry over WebSocket (`order.new`, `order.replace`, `order.cancel`), the private
//! `orders` channel, `auth` as a message, and isolation between users, over real sockets.

mod common;

use common::*;
use serde_json::{json, Value};
use tickgate_gateway::client::{self, Client};

/// Sends a request and reads until its answer (same `id`); executions seen meanwhile are
/// kept in `stash`.
async fn ask(ws: &mut Client, body: Value, stash: &mut Vec<Value>) -> Value {
    let id = body["id"].clone();
    client::send_json(ws, &body).await.expect("send");
    loop {
        let v = text(ws).await;
        if v["op"] == "execution" {
            stash.push(v);
        } else if v["id"] == id {
            return v;
        }
    }
}

/// Reads until `stash` holds `n` executions.
async fn executions(ws: &mut Client, stash: &mut Vec<Value>, n: usize) {
    while stash.len() < n {
        let v = text(ws).await;
        if v["op"] == "execution" {
            stash.push(v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_entry_and_private_reports_over_websocket() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let mut a = connect(&server, &format!("?token={}", alice.token)).await;
    let mut b = connect(&server, &format!("?token={}", bob.token)).await;
    let (mut a_exec, mut b_exec) = (Vec::new(), Vec::new());

    let sub =
        ask(&mut a, json!({"op": "subscribe", "id": 1, "channels": ["orders"]}), &mut a_exec).await;
    assert_eq!(sub["op"], "subscribed", "{sub}");
    let sub =
        ask(&mut b, json!({"op": "subscribe", "id": 1, "channels": ["orders"]}), &mut b_exec).await;
    assert_eq!(sub["op"], "subscribed", "{sub}");

    // Alice rests a sell; the answer is the engine's verdict with the order.
    let placed = ask(
        &mut a,
        json!({"op": "order.new", "id": 2, "symbol": "BTC-USD", "side": "sell", "type": "limit", "price": "65000.00", "qty": "0.5000", "client_order_id": 77}),
        &mut a_exec,
    )
    .await;
    assert_eq!(placed["op"], "order.accepted", "{placed}");
    let order = &placed["order"];
    assert_eq!(
        (order["status"].as_str(), order["client_order_id"].as_u64()),
        (Some("open"), Some(77))
    );
    let id = order["id"].as_u64().expect("order id");

    // Replace down in size (keeps priority), then Bob buys part of it over WebSocket.
    let replaced = ask(
        &mut a,
        json!({"op": "order.replace", "id": 3, "order_id": id, "qty": "0.4000"}),
        &mut a_exec,
    )
    .await;
    assert_eq!(
        (replaced["op"].as_str(), replaced["order"]["open_qty"].as_str()),
        (Some("order.replaced"), Some("0.4000")),
        "{replaced}"
    );
    let taken = ask(
        &mut b,
        json!({"op": "order.new", "id": 4, "symbol": "BTC-USD", "side": "buy", "type": "ioc", "price": "65000.00", "qty": "0.1000"}),
        &mut b_exec,
    )
    .await;
    assert_eq!(taken["op"], "order.accepted", "{taken}");
    let canceled =
        ask(&mut a, json!({"op": "order.cancel", "id": 5, "order_id": id}), &mut a_exec).await;
    assert_eq!(
        (canceled["op"].as_str(), canceled["order"]["status"].as_str()),
        (Some("order.canceled"), Some("canceled")),
        "{canceled}"
    );
    assert_eq!(canceled["order"]["filled_qty"], "0.1000");

    // Alice's channel: accepted, replaced, partially filled, canceled, with contiguous seqs.
    executions(&mut a, &mut a_exec, 4).await;
    let kinds: Vec<_> = a_exec.iter().map(|e| e["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(kinds, ["accepted", "replaced", "partially_filled", "canceled"], "{a_exec:?}");
    assert!(a_exec.iter().all(|e| e["order_id"] == id && e["channel"] == "orders"));
    let seqs: Vec<u64> = a_exec.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(a_exec[2]["last_qty"], "0.1000");

    // Bob's channel has only Bob's order: accepted, filled.
    executions(&mut b, &mut b_exec, 2).await;
    assert!(b_exec.iter().all(|e| e["order_id"] != id), "Bob saw Alice's order: {b_exec:?}");
    let ping = ask(&mut b, json!({"op": "ping", "id": 9}), &mut b_exec).await;
    assert_eq!(ping["op"], "pong");
    assert_eq!(b_exec.len(), 2, "{b_exec:?}");

    // Bob cannot touch Alice's order, and engine rejections carry the engine's reason.
    let foreign =
        ask(&mut b, json!({"op": "order.cancel", "id": 10, "order_id": id}), &mut b_exec).await;
    assert_eq!(
        (foreign["op"].as_str(), foreign["code"].as_str()),
        (Some("error"), Some("unknown_order"))
    );
    let poor = ask(
        &mut b,
        json!({"op": "order.new", "id": 11, "symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "65000.00", "qty": "999.0000"}),
        &mut b_exec,
    )
    .await;
    assert_eq!(poor["code"], "insufficient_funds", "{poor}");
    assert!(poor["order_id"].as_u64().is_some(), "the refused order's id: {poor}");
    let bad = ask(
        &mut b,
        json!({"op": "order.new", "id": 12, "symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "1.001", "qty": "1"}),
        &mut b_exec,
    )
    .await;
    assert_eq!(bad["code"], "invalid_price", "{bad}");
    let unknown = ask(
        &mut b,
        json!({"op": "order.new", "id": 13, "symbol": "NOPE", "side": "buy", "type": "limit", "price": "1", "qty": "1"}),
        &mut b_exec,
    )
    .await;
    assert_eq!(unknown["code"], "unknown_symbol", "{unknown}");
    // An order the engine refuses for its price: its report shows no price, as REST does.
    let negative = ask(
        &mut b,
        json!({"op": "order.new", "id": 14, "symbol": "BTC-USD", "side": "buy", "type": "limit", "price": "-5.00", "qty": "1"}),
        &mut b_exec,
    )
    .await;
    assert_eq!(negative["code"], "price_out_of_band", "{negative}");
    let report = loop {
        if let Some(r) = b_exec.iter().find(|e| e["reason"] == "price_out_of_band") {
            break r.clone();
        }
        let more = b_exec.len() + 1;
        executions(&mut b, &mut b_exec, more).await;
    };
    assert_eq!((report["kind"].as_str(), report["price"].is_null()), (Some("rejected"), true));
    let path = format!("/api/v1/orders/{}", report["order_id"]);
    let (status, rest) = bob.call("GET", &path, None, "").await;
    assert_eq!(
        (status, rest["status"].as_str(), rest["price"].is_null()),
        (200, Some("rejected"), true)
    );
    // The REST view agrees with what the socket said.
    let (status, rest) = alice.call("GET", &format!("/api/v1/orders/{id}"), None, "").await;
    assert_eq!(
        (status, rest["status"].as_str(), rest["filled_qty"].as_str()),
        (200, Some("canceled"), Some("0.1000"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_message_unlocks_order_entry() {
    let server = start(|_| {}).await;
    let alice = Api::login(server.local_addr(), 0).await;
    let mut ws = connect(&server, "").await;
    let mut stash = Vec::new();
    let order = json!({"op": "order.new", "id": 1, "symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "3000.00", "qty": "1.000"});
    let refused = ask(&mut ws, order.clone(), &mut stash).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unauthorized"))
    );
    let refused =
        ask(&mut ws, json!({"op": "subscribe", "id": 2, "channels": ["orders"]}), &mut stash).await;
    assert_eq!(refused["code"], "unauthorized");
    let bad =
        ask(&mut ws, json!({"op": "auth", "id": 3, "token": "forged.token.value"}), &mut stash)
            .await;
    assert_eq!(bad["code"], "unauthorized");
    let ok = ask(&mut ws, json!({"op": "auth", "id": 4, "token": alice.token}), &mut stash).await;
    assert_eq!(
        (ok["op"].as_str(), ok["account"].as_u64()),
        (Some("authenticated"), Some(1)),
        "{ok}"
    );
    let again =
        ask(&mut ws, json!({"op": "auth", "id": 5, "token": alice.token}), &mut stash).await;
    assert_eq!(again["code"], "already_authenticated");
    let mixed = ask(
        &mut ws,
        json!({"op": "subscribe", "id": 6, "channels": ["orders", "bbo.ETH-USD"]}),
        &mut stash,
    )
    .await;
    assert_eq!(mixed["code"], "malformed");
    let placed = ask(&mut ws, order, &mut stash).await;
    assert_eq!(placed["op"], "order.accepted", "{placed}");
    let left =
        ask(&mut ws, json!({"op": "unsubscribe", "id": 7, "channels": ["orders"]}), &mut stash)
            .await;
    assert_eq!(left["code"], "not_subscribed");
}

/// Over WebSocket too, an order's answer is the engine's whole verdict: market, IOC and FOK
/// orders that trade at several levels are answered `filled`, never `open`; a keyed
/// retry (`idempotency_key`, shared with REST) answers the same order; a refused replace
/// says `replace_rejected` on the `orders` channel with the order's true open quantity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_answers_are_whole_verdicts_and_keys_are_shared_with_rest() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    for level in 0..40 {
        let body = json!({"symbol": "ETH-USD", "side": "sell", "type": "limit", "price": format!("{}.00", 3000 + level), "qty": "0.100"});
        assert_eq!(bob.order(body).await.0, 201);
    }
    let mut a = connect(&server, &format!("?token={}", alice.token)).await;
    let mut stash = Vec::new();
    let sub =
        ask(&mut a, json!({"op": "subscribe", "id": 1, "channels": ["orders"]}), &mut stash).await;
    assert_eq!(sub["op"], "subscribed", "{sub}");
    for (n, kind) in ["market", "ioc", "fok", "market", "ioc", "fok"].into_iter().enumerate() {
        let id = 10 + n as u64;
        // A market order takes no price; the others are limited far through the book.
        let mut body = json!({"op": "order.new", "id": id, "symbol": "ETH-USD", "side": "buy", "type": kind, "price": "3100.00", "qty": "0.250", "idempotency_key": format!("ws-{n}")});
        if kind == "market" {
            body.as_object_mut().expect("object").remove("price");
        }
        let answer = ask(&mut a, body, &mut stash).await;
        assert_eq!(answer["op"], "order.accepted", "{answer}");
        assert_eq!(
            (answer["order"]["status"].as_str(), answer["order"]["filled_qty"].as_str()),
            (Some("filled"), Some("0.250")),
            "{kind}: {answer}"
        );
        // The same key over REST is the same request: the same order, as it stands.
        let mut rest = json!({"symbol": "ETH-USD", "side": "buy", "type": kind, "price": "3100.00", "qty": "0.250"});
        if kind == "market" {
            rest.as_object_mut().expect("object").remove("price");
        }
        let (status, again) = alice
            .call("POST", "/api/v1/orders", Some(rest), &format!("Idempotency-Key: ws-{n}\r\n"))
            .await;
        assert_eq!((status, &again), (201, &answer["order"]), "{kind}");
    }
    // A refused replace leaves the order open and says so on the private channel.
    let resting = ask(
        &mut a,
        json!({"op": "order.new", "id": 30, "symbol": "ETH-USD", "side": "buy", "type": "limit", "price": "2000.00", "qty": "0.005"}),
        &mut stash,
    )
    .await;
    let order_id = resting["order"]["id"].as_u64().expect("id");
    let refused = ask(
        &mut a,
        json!({"op": "order.replace", "id": 31, "order_id": order_id, "qty": "0.005"}),
        &mut stash,
    )
    .await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("no_change"))
    );
    loop {
        if let Some(r) = stash.iter().find(|e| e["kind"] == "replace_rejected") {
            assert_eq!(
                (r["order_id"].as_u64(), r["open_qty"].as_str()),
                (Some(order_id), Some("0.005")),
                "{r}"
            );
            break;
        }
        let n = stash.len() + 1;
        executions(&mut a, &mut stash, n).await;
    }
    server.shutdown().await.expect("clean shutdown");
}

/// The next `execution` text frame, as the exact text the server sent.
async fn raw_execution(ws: &mut Client) -> String {
    loop {
        if let client::Message::Text(t) = next(ws).await {
            if t.contains("\"op\":\"execution\"") {
                return t;
            }
        }
    }
}

/// A transfer reaches the `orders` channel as `kind: transferred` with the asset and the
/// amount, byte for byte, and takes the account's next report `seq` (no gap either side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_on_the_orders_channel_takes_the_next_seq() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;
    let mut a = connect(&server, &format!("?token={}", alice.token)).await;
    let sub = request(&mut a, json!({"op": "subscribe", "id": 1, "channels": ["orders"]})).await;
    assert_eq!(sub["op"], "subscribed", "{sub}");
    let engine = server.engine();
    let btc = symbol_id(engine, "BTC-USD");
    let shard = engine.shard_of(btc).expect("known instrument");
    let usd = engine.assets().iter().position(|a| a.symbol == "USD").expect("USD asset");
    let place = || {
        order(engine, 1, btc, tickgate_engine::Side::Buy, tickgate_engine::OrderType::Limit, 100, 1)
    };

    place();
    let first: Value = serde_json::from_str(&raw_execution(&mut a).await).expect("JSON");
    let t = tickgate_engine::Transfer {
        account: tickgate_engine::AccountId(1),
        asset: tickgate_engine::AssetId(usd as u16),
        amount: tickgate_engine::Amount(-1_25),
        request_id: 9,
    };
    engine.submit_transfer(shard, t).expect("queue has room");
    let raw = raw_execution(&mut a).await;
    let transfer: Value = serde_json::from_str(&raw).expect("JSON");
    place();
    let last: Value = serde_json::from_str(&raw_execution(&mut a).await).expect("JSON");

    let seq = first["seq"].as_u64().expect("seq");
    assert_eq!(transfer["seq"].as_u64(), Some(seq + 1), "{raw}");
    assert_eq!(last["seq"].as_u64(), Some(seq + 2), "{last}");
    let expected = format!(
        "{{\"amount\":\"-0.000125\",\"asset\":\"USD\",\"channel\":\"orders\",\"kind\":\"transferred\",\"op\":\"execution\",\"seq\":{},\"shard\":{shard},\"ts\":{}}}",
        seq + 1,
        transfer["ts"]
    );
    assert_eq!(raw, expected);
}

/// With two engine shards each shard numbers an account's reports itself: a fill on each
/// with the same report sequence must both be listed (ids unique per account), and the
/// `orders` channel says which shard a report's `seq` counts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_and_reports_of_two_shards_stay_apart() {
    let server = start(|c| c.shards = 2).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let mut a = connect(&server, &format!("?token={}", alice.token)).await;
    let sub = request(&mut a, json!({"op": "subscribe", "id": 1, "channels": ["orders"]})).await;
    assert_eq!(sub["op"], "subscribed", "{sub}");
    let engine = server.engine();
    // The same steps on each shard, so the two fills get the same report sequence.
    let markets = [("BTC-USD", "0.0100"), ("ETH-USD", "0.010")];
    for (symbol, qty) in markets {
        let sell = json!({"symbol": symbol, "side": "sell", "type": "limit", "price": "100.00", "qty": qty});
        let (status, placed) = bob.order(sell).await;
        assert_eq!((status, placed["status"].as_str()), (201, Some("open")), "{placed}");
        let buy = json!({"symbol": symbol, "side": "buy", "type": "limit", "price": "100.00", "qty": qty});
        let (status, filled) = alice.order(buy).await;
        assert_eq!((status, filled["status"].as_str()), (201, Some("filled")), "{filled}");
    }
    let (status, fills) = alice.call("GET", "/api/v1/fills", None, "").await;
    assert_eq!(status, 200, "{fills}");
    let list = fills["fills"].as_array().expect("fills");
    let mut symbols: Vec<_> = list.iter().filter_map(|f| f["symbol"].as_str()).collect();
    symbols.sort_unstable();
    assert_eq!(symbols, ["BTC-USD", "ETH-USD"], "both fills listed: {fills}");
    assert_ne!(list[0]["id"], list[1]["id"], "{fills}");

    // Alice's reports: accepted then filled on each market, each with its shard, and the
    // sequence contiguous per shard.
    let mut last_seq = std::collections::HashMap::new();
    for _ in 0..4 {
        let report: Value = serde_json::from_str(&raw_execution(&mut a).await).expect("JSON");
        let symbol = report["symbol"].as_str().expect("symbol");
        let shard = engine.shard_of(symbol_id(engine, symbol)).expect("known");
        assert_eq!(report["shard"].as_u64(), Some(shard as u64), "{report}");
        let seq = report["seq"].as_u64().expect("seq");
        if let Some(before) = last_seq.insert(shard, seq) {
            assert_eq!(seq, before + 1, "contiguous on shard {shard}: {report}");
        }
    }
    assert_eq!(last_seq.len(), 2, "reports from both shards");
    assert_eq!(last_seq[&0], last_seq[&1], "the two shards' fills share a sequence");

    // BTC's shard gets busier (its sequences, so its fill ids, run ahead); a fill on ETH's
    // after them is still the newest: the list is in engine time.
    for (symbol, qty) in [markets[0], markets[0], markets[0], markets[1]] {
        let sell = json!({"symbol": symbol, "side": "sell", "type": "limit", "price": "100.00", "qty": qty});
        assert_eq!(bob.order(sell).await.0, 201);
        let buy =
            json!({"symbol": symbol, "side": "buy", "type": "ioc", "price": "100.00", "qty": qty});
        assert_eq!(alice.order(buy).await.0, 201);
    }
    let (_, newest) = alice.call("GET", "/api/v1/fills?limit=1", None, "").await;
    let top = &newest["fills"][0];
    assert_eq!(top["symbol"], "ETH-USD", "{newest}");
    let (_, all) = alice.call("GET", "/api/v1/fills", None, "").await;
    let ids: Vec<u64> =
        all["fills"].as_array().expect("fills").iter().filter_map(|f| f["id"].as_u64()).collect();
    assert!(
        ids.iter().skip(1).any(|id| Some(*id) > top["id"].as_u64()),
        "ids are not time: {ids:?}"
    );
    // Paging one at a time from the top meets every fill once.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/api/v1/fills?limit=1{cursor}");
        let (_, page) = alice.call("GET", &path, None, "").await;
        let Some(f) = page["fills"].as_array().and_then(|l| l.first()).cloned() else { break };
        paged.push(f["id"].as_u64().expect("id"));
        match page["next_cursor"].as_u64() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, ids, "one page at a time gives the same list");

    // The account: each shard's own ledger beside their sum.
    let (status, account) = alice.call("GET", "/api/v1/account", None, "").await;
    assert_eq!(status, 200, "{account}");
    let shards = account["shards"].as_array().expect("per shard with two shards");
    assert_eq!(shards.len(), 2, "{account}");
    let units = |v: &Value| tickgate_engine::types::parse_fixed(v.as_str().expect("decimal"), 8);
    for (i, total) in account["balances"].as_array().expect("balances").iter().enumerate() {
        let summed: i64 = shards.iter().filter_map(|s| units(&s["balances"][i]["total"])).sum();
        assert_eq!(Some(summed), units(&total["total"]), "{total}");
    }
    // Alice paid for four BTC fills (shard 0) and two ETH fills (shard 1), 1.00 USD each.
    let usd = |s: &Value| {
        let b = s["balances"].as_array().and_then(|b| b.iter().find(|b| b["asset"] == "USD"));
        b.and_then(|b| units(&b["total"])).expect("USD")
    };
    assert_eq!(usd(&shards[1]) - usd(&shards[0]), 200_000_000, "{account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_all_over_websocket() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let alice = Api::login(addr, 0).await;
    let mut public = connect(&server, "").await;
    let mut stash = Vec::new();
    let refused = ask(&mut public, json!({"op": "order.cancel_all", "id": 1}), &mut stash).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unauthorized"))
    );

    let mut a = connect(&server, &format!("?token={}", alice.token)).await;
    let mut placed = Vec::new();
    for (n, symbol, price, qty) in [
        (1, "SOL-USD", "200.00", "1.00"),
        (2, "SOL-USD", "201.00", "1.00"),
        (3, "ETH-USD", "4000.00", "1.0000"),
    ] {
        let body = json!({"op": "order.new", "id": n, "symbol": symbol, "side": "sell", "type": "limit", "price": price, "qty": qty});
        let answer = ask(&mut a, body, &mut stash).await;
        assert_eq!(answer["op"], "order.accepted", "{answer}");
        placed.push(answer["order"]["id"].as_u64().unwrap());
    }
    let unknown =
        ask(&mut a, json!({"op": "order.cancel_all", "id": "x", "symbol": "NOPE"}), &mut stash)
            .await;
    assert_eq!(
        (unknown["code"].as_str(), unknown["id"].as_str()),
        (Some("unknown_symbol"), Some("x"))
    );

    let sol =
        ask(&mut a, json!({"op": "order.cancel_all", "id": 9, "symbol": "SOL-USD"}), &mut stash)
            .await;
    assert_eq!(sol["op"], "order.canceled_all", "{sol}");
    let ids: Vec<_> =
        sol["canceled"].as_array().unwrap().iter().map(|o| o["id"].as_u64()).collect();
    assert_eq!(ids, vec![Some(placed[1]), Some(placed[0])], "{sol}");
    assert_eq!(sol["not_canceled"], json!([]));
    let all = ask(&mut a, json!({"op": "order.cancel_all", "id": 10}), &mut stash).await;
    assert_eq!(all["canceled"][0]["id"].as_u64(), Some(placed[2]), "{all}");
    assert_eq!(all["canceled"][0]["status"], "canceled");
    let (_, open) = alice.call("GET", "/api/v1/orders?status=open", None, "").await;
    assert_eq!(open["orders"], json!([]));

    // Orders sent just before a cancel-all, their answers not yet back, are covered: it
    // waits for the connection's requests that came before it.
    for n in 20..25 {
        let body = json!({"op": "order.new", "id": n, "symbol": "SOL-USD", "side": "sell", "type": "limit", "price": "205.00", "qty": "1.00"});
        client::send_json(&mut a, &body).await.expect("send");
    }
    let all = ask(&mut a, json!({"op": "order.cancel_all", "id": 30}), &mut stash).await;
    assert_eq!(all["canceled"].as_array().map(Vec::len), Some(5), "{all}");
    let (_, open) = alice.call("GET", "/api/v1/orders?status=open", None, "").await;
    assert_eq!(open["orders"], json!([]));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_disconnect_cancels_the_connections_or_the_accounts_orders() {
    let server = start(|_| {}).await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let mut stash = Vec::new();
    let mut public = connect(&server, "").await;
    let refused = ask(
        &mut public,
        json!({"op": "cancel_on_disconnect", "id": 1, "enabled": true}),
        &mut stash,
    )
    .await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    let missing =
        ask(&mut public, json!({"op": "cancel_on_disconnect", "id": 2}), &mut stash).await;
    assert_eq!(missing["code"], "malformed", "{missing}");

    let sell = |n: u64, price: &str| json!({"op": "order.new", "id": n, "symbol": "SOL-USD", "side": "sell", "type": "limit", "price": price, "qty": "1.00"});
    let rest_sell = |price: &str| json!({"symbol": "SOL-USD", "side": "sell", "type": "limit", "price": price, "qty": "1.00"});
    // Bob turns it on, then off: his order outlives his connection.
    let mut b = connect(&server, &format!("?token={}", bob.token)).await;
    assert_eq!(ask(&mut b, sell(1, "300.00"), &mut stash).await["op"], "order.accepted");
    let on = json!({"op": "cancel_on_disconnect", "id": 2, "enabled": true});
    let answer = ask(&mut b, on, &mut stash).await;
    assert_eq!(
        (answer["enabled"].as_bool(), answer["scope"].as_str()),
        (Some(true), Some("connection"))
    );
    let off = json!({"op": "cancel_on_disconnect", "id": 3, "enabled": false});
    assert_eq!(ask(&mut b, off, &mut stash).await["enabled"], false);
    drop(b);

    // Bob again, with the default scope, the connection's: the orders it placed go, one
    // placed over REST meanwhile stays (another program's, another tab's).
    let mut b = connect(&server, &format!("?token={}", bob.token)).await;
    let on = json!({"op": "cancel_on_disconnect", "id": 1, "enabled": true});
    assert_eq!(ask(&mut b, on, &mut stash).await["scope"], "connection");
    assert_eq!(ask(&mut b, sell(2, "310.00"), &mut stash).await["op"], "order.accepted");
    let (status, bob_rest) = bob.order(rest_sell("311.00")).await;
    assert_eq!(status, 201, "{bob_rest}");
    drop(b);
    eventually_open_orders(&bob, 2).await;
    let (_, bob_open) = bob.call("GET", "/api/v1/orders?status=open", None, "").await;
    let prices: Vec<_> =
        bob_open["orders"].as_array().expect("orders").iter().map(|o| o["price"].clone()).collect();
    assert_eq!(prices, vec![json!("311.00"), json!("300.00")], "{bob_open}");

    // Alice asks for the account's scope: her order placed over REST is canceled too, and
    // one sent right before the connection drops, with its answer never read.
    let (status, rest_order) = alice.order(rest_sell("301.00")).await;
    assert_eq!(status, 201, "{rest_order}");
    let mut a = connect(&server, &format!("?token={}", alice.token)).await;
    let on = json!({"op": "cancel_on_disconnect", "id": 1, "enabled": true, "scope": "account"});
    assert_eq!(ask(&mut a, on, &mut stash).await["scope"], "account");
    assert_eq!(ask(&mut a, sell(2, "302.00"), &mut stash).await["op"], "order.accepted");
    client::send_json(&mut a, &sell(3, "303.00")).await.expect("send");
    drop(a);

    eventually_open_orders(&alice, 0).await;
    let (_, closed) = alice.call("GET", "/api/v1/orders?status=closed", None, "").await;
    let closed = closed["orders"].as_array().expect("orders").clone();
    assert_eq!(closed.len(), 3, "{closed:?}");
    assert!(closed.iter().all(|o| o["reason"] == "user_canceled"), "{closed:?}");
    let (_, metrics) = http_raw(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(metrics.contains("tickgate_ws_disconnect_cancels_total 4"), "{metrics}");
    server.shutdown().await.expect("clean shutdown");
}

/// Waits until `api`'s user has `n` open orders.
async fn eventually_open_orders(api: &Api, n: usize) {
    for _ in 0..1200 {
        let (_, open) = api.call("GET", "/api/v1/orders?status=open", None, "").await;
        if open["orders"].as_array().map(Vec::len) == Some(n) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("never {n} open orders");
}

/// With the engine's queue kept full (a feed as fast as it goes, a small queue), cancels
/// are refused `engine_busy` now and then: cancel-on-disconnect retries them, as nobody is
/// left to, until every order of the connection is canceled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_disconnect_retries_what_a_busy_engine_refused() {
    let server = start(|c| {
        c.queue_capacity = 64;
        c.feed_rate = Some(0);
        c.ws.inbound_rate_per_sec = 100_000;
        c.ws.inbound_burst = 100_000;
    })
    .await;
    let alice = Api::login(server.local_addr(), 0).await;
    // `/healthz` says so: alive (200), but busy, with the queue's depth.
    let addr = server.local_addr();
    let mut health = Value::Null;
    for _ in 0..200 {
        let get = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let (status, response) = http_raw(addr, &get).await;
        health = body_json(&response);
        if status == 200 && health["status"] == "busy" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(health["status"], "busy", "{health}");
    assert!(health["engine"]["queue_depth"][0].as_u64().is_some_and(|d| d >= 57), "{health}");
    let mut a = connect(&server, &format!("?token={}", alice.token)).await;
    let mut stash = Vec::new();
    let on = json!({"op": "cancel_on_disconnect", "id": "on", "enabled": true});
    assert_eq!(ask(&mut a, on, &mut stash).await["enabled"], true);
    let mut placed = 0;
    for n in 0..400u64 {
        let order = json!({"op": "order.new", "id": n, "symbol": "DOGE-USD", "side": "buy", "type": "limit", "price": "0.10000", "qty": "100"});
        let answer = ask(&mut a, order, &mut stash).await;
        if answer["op"] == "order.accepted" {
            placed += 1;
            if placed == 60 {
                break;
            }
        } else {
            assert_eq!(answer["code"], "engine_busy", "{answer}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_eq!(placed, 60);
    drop(a);
    eventually_open_orders(&alice, 0).await;
    server.shutdown().await.expect("clean shutdown");
}

/// A cancel that loses the race with a fill is refused by the engine, which no longer has
/// the order: its report on the `orders` channel says `order_closed`, as the answer does,
/// with the order as it ended (not the engine's zeroed fields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_loses_to_a_fill_is_reported_order_closed_with_the_order() {
    let server = start(|c| {
        c.ws.inbound_rate_per_sec = 100_000;
        c.ws.inbound_burst = 100_000;
    })
    .await;
    let addr = server.local_addr();
    let (alice, bob) = (Api::login(addr, 0).await, Api::login(addr, 1).await);
    let mut a = connect(&server, &format!("?token={}", alice.token)).await;
    let mut stash = Vec::new();
    let sub = json!({"op": "subscribe", "id": "s", "channels": ["orders"]});
    assert_eq!(ask(&mut a, sub, &mut stash).await["op"], "subscribed");
    let mut seen = 0;
    // The race is a matter of microseconds (the cancel must leave after the fill reached the
    // engine, before this gateway's store has it): rounds sweep the cancel's start over
    // 0 to 1 ms after the take's (60 rounds without the sweep missed it about one run in
    // three on an idle machine).
    for round in 0..300u64 {
        let sell = json!({"op": "order.new", "id": round * 2, "symbol": "XRP-USD", "side": "sell", "type": "limit", "price": "0.5000", "qty": "10.0"});
        let placed = ask(&mut a, sell, &mut stash).await;
        let id = placed["order"]["id"].as_u64().expect("placed");
        let cancel = json!({"op": "order.cancel", "id": round * 2 + 1, "order_id": id});
        let take = json!({"symbol": "XRP-USD", "side": "buy", "type": "ioc", "price": "0.5000", "qty": "10.0"});
        let delay = std::time::Duration::from_micros(round % 11 * 100);
        let late_cancel = async {
            let start = std::time::Instant::now();
            while start.elapsed() < delay {
                tokio::task::yield_now().await;
            }
            ask(&mut a, cancel, &mut stash).await
        };
        let (taken, answer) = tokio::join!(bob.order(take), late_cancel);
        assert_eq!(taken.0, 201, "{taken:?}");
        if answer["op"] == "order.canceled" {
            continue;
        }
        assert_eq!(answer["code"], "order_closed", "{answer}");
        // The engine's refusal, if the cancel reached it, is on the channel: wait for it
        // (the fill is reported before it) or for the next round's order to show up.
        let report = loop {
            if let Some(r) =
                stash.iter().find(|e| e["order_id"] == id && e["kind"] == "cancel_rejected")
            {
                break Some(r.clone());
            }
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(300), text(&mut a)).await;
            match next {
                Ok(v) if v["op"] == "execution" => stash.push(v),
                Ok(_) => {}
                Err(_) => break None, // refused before the engine: no report
            }
        };
        let Some(report) = report else { continue };
        seen += 1;
        assert_eq!(
            (
                report["reason"].as_str(),
                report["side"].as_str(),
                report["filled_qty"].as_str(),
                report["open_qty"].as_str()
            ),
            (Some("order_closed"), Some("sell"), Some("10.0"), Some("0.0")),
            "{report}"
        );
        if seen == 3 {
            break;
        }
    }
    assert!(seen > 0, "the cancel never reached the engine after the fill in 300 rounds");
    server.shutdown().await.expect("clean shutdown");
}
